"""One stream Redis rejects never stalls the shared multiplexed read (``StreamReader``).

The read names every followed stream; Redis answers an error for the whole command if any one is
wrong (a key of another type, a position it cannot parse). The reader must drop that stream,
tell its subscriber, and keep delivering every other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from fakeredis.aioredis import FakeRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.errors import StreamEntryError
from protocol.keys import Keys
from redisio.connection import Entries, RedisHealth
from redisio.pumps import StreamReader, _Subscription


@pytest.fixture
async def real_redis() -> AsyncIterator[tuple[Redis, str]]:
    """The real Redis at ``REDIS_URL`` (fakeredis crashes on XREAD of a non-stream key) and a
    private namespace, removed afterwards."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("needs a real Redis: set REDIS_URL")
    redis = Redis.from_url(url)
    ns = f"vgiso-{uuid.uuid4().hex[:8]}"
    yield redis, ns
    async for key in redis.scan_iter(match=f"{ns}:*"):
        await redis.delete(key)
    await redis.aclose()


async def _deliveries(
    reader: StreamReader, redis: Redis, errors: list[ResponseError], ns: str = "t"
) -> list[bytes]:
    got: list[bytes] = []

    def consume(entries: Entries) -> None:
        got.extend(fields[b"n"] for _, fields in entries)

    good = f"{ns}:{{good}}:in"
    await reader.add(good, after="0-0", consumer=consume, on_error=errors.append)
    task = asyncio.create_task(reader.run())
    try:
        for n in range(3):
            await redis.xadd(good, {"n": str(n)})
        async with asyncio.timeout(3):
            while len(got) < 3:  # noqa: ASYNC110 - polled delivery
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return got


@pytest.mark.integration
async def test_a_stream_of_another_type_is_dropped_and_the_others_keep_flowing(
    real_redis: tuple[Redis, str],
) -> None:
    redis, ns = real_redis
    bad = f"{ns}:{{bad}}:in"
    await redis.set(bad, "not a stream")
    reader = StreamReader(redis, Keys(ns), RedisHealth(), block_ms=50, linger_s=0)
    bad_errors: list[ResponseError] = []
    await reader.add(bad, after="0-0", consumer=lambda _: None, on_error=bad_errors.append)
    good_errors: list[ResponseError] = []
    assert await _deliveries(reader, redis, good_errors, ns) == [b"0", b"1", b"2"]
    assert len(bad_errors) == 1 and "WRONGTYPE" in str(bad_errors[0])
    assert good_errors == []
    assert bad.encode() not in reader._subs


@pytest.mark.integration
async def test_a_position_redis_rejects_is_isolated_on_real_redis(
    real_redis: tuple[Redis, str],
) -> None:
    redis, ns = real_redis
    bad = f"{ns}:{{bad}}:in"
    await redis.xadd(bad, {"n": "x"})
    reader = StreamReader(redis, Keys(ns), RedisHealth(), block_ms=50, linger_s=0)
    bad_errors: list[ResponseError] = []
    # the position the issue found stalling a gateway (add() refuses it now, see below)
    reader._subs[bad.encode()] = _Subscription(
        b"99999999999999999999-0", lambda _: None, bad_errors.append
    )
    assert await _deliveries(reader, redis, [], ns) == [b"0", b"1", b"2"]
    assert len(bad_errors) == 1 and "Invalid stream ID" in str(bad_errors[0])


async def test_a_position_redis_rejects_is_isolated() -> None:
    redis = FakeRedis()
    await redis.xadd("t:{bad}:in", {"n": "x"})
    reader = StreamReader(redis, Keys("t"), RedisHealth(), block_ms=50, linger_s=0)
    bad_errors: list[ResponseError] = []
    # what an unvalidated position would do (add() refuses it, see below)
    reader._subs[b"t:{bad}:in"] = _Subscription(b"not-an-id", lambda _: None, bad_errors.append)
    assert await _deliveries(reader, redis, []) == [b"0", b"1", b"2"]
    assert len(bad_errors) == 1
    await redis.aclose()


@pytest.mark.parametrize(
    "position", ["99999999999999999999-0", "18446744073709551616-0", "\u0661-\u0661", "1-\u00b2"]
)
async def test_add_refuses_a_position_redis_would_reject(position: str) -> None:
    reader = StreamReader(FakeRedis(), Keys("t"), RedisHealth())
    with pytest.raises(StreamEntryError, match="ASCII digits"):
        await reader.add("t:{s}:in", after=position, consumer=lambda _: None)
    assert reader._subs == {}
