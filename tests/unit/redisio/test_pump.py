"""The pumps' kept connection (``redisio.pumps.PumpConnection``) against fakeredis and redis-py."""

from __future__ import annotations

from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from redisio.connection import PumpConnection, _stream_reply


async def test_xread_matches_redis_py_and_keeps_one_connection() -> None:
    redis = FakeRedis()
    for n in range(3):
        await redis.xadd("s:{a}:in", {"v": b"1", "n": n})
    await redis.xadd("s:{b}:in", {"v": b"1"})
    pump = PumpConnection(redis)
    streams = {b"s:{a}:in": b"0-0", b"s:{b}:in": b"0-0", b"s:{c}:in": b"0-0"}
    expected = await redis.xread(streams, count=2)  # type: ignore[arg-type]
    got = await pump.xread(streams, count=2, block_ms=10)
    assert got == [(stream, list(entries)) for stream, entries in expected]
    assert [len(entries) for _, entries in got] == [2, 1]
    kept = pump._conn
    assert await pump.xread({b"s:{c}:in": b"0-0"}, count=2, block_ms=10) == []  # timed out
    assert pump._conn is kept
    await pump.close()
    assert pump._conn is None
    await redis.aclose()


async def test_pipeline_returns_each_reply_or_its_error_in_order() -> None:
    redis = FakeRedis()
    await redis.set("text", "x")
    pump = PumpConnection(redis)
    replies = await pump.pipeline(
        [
            ("XADD", "s:{a}:out", "MAXLEN", "~", 10, "*", "v", b"1", "ts", 5),
            ("INCR", "text"),
            ("EVALSHA", "0" * 40, 0),
            ("GET", "text"),
        ]
    )
    assert isinstance(replies[0], bytes) and replies[0].count(b"-") == 1
    assert isinstance(replies[1], ResponseError)
    assert isinstance(replies[2], NoScriptError)
    assert replies[3] == b"x"
    entries = await redis.xrange("s:{a}:out")
    assert entries[0][1] == {b"v": b"1", b"ts": b"5"}
    await pump.close()
    await redis.aclose()


async def test_a_failed_round_drops_the_connection_and_the_next_one_reconnects() -> None:
    server = FakeServer()
    redis = FakeRedis(server=server)
    pump = PumpConnection(redis)
    assert await pump.pipeline([("PING",)]) == [b"PONG"]
    server.connected = False
    with pytest.raises(RedisConnectionError):
        await pump.pipeline([("PING",)])
    assert pump._conn is None
    server.connected = True
    assert await pump.pipeline([("PING",)]) == [b"PONG"]
    await pump.close()
    await redis.aclose()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (None, []),
        ([], []),
        (
            [[b"k", [[b"1-0", [b"a", b"1", b"b", b"2"]], [b"2-0", None]]]],
            [(b"k", [(b"1-0", {b"a": b"1", b"b": b"2"}), (b"2-0", {})])],
        ),
        ({b"k": [[b"1-0", [b"a", b"1"]]]}, [(b"k", [(b"1-0", {b"a": b"1"})])]),  # RESP3
    ],
)
def test_stream_replies_of_every_shape(reply: Any, expected: Any) -> None:
    assert _stream_reply(reply) == expected
