"""A caller learns when its session is gone, and nothing it writes afterwards leaks.

Redis restarted without its data (here: fakeredis flushed), an older copy of the record
restored (the epoch went back), or the record closed by someone without a ``closed`` event: the
``RedisRealtimeClient`` reports ``error`` (code ``session_lost``) and then ``closed`` within two
session checks, ``connected`` turns false, ``send_audio`` raises, and no ingress write creates a
key without an expiry. Also: a refused ``connect`` with an id already in use leaves that session
alone, a ``closed`` that arrives with the connect acknowledgement ends the connect as closed, and
concurrent ``disconnect`` calls all return after the ``closed`` event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from ingress.client import SESSION_CHECK_S, SESSION_LOST
from protocol import NotConnectedError, RealtimeSessionConfig, UsageError
from protocol.events import ConnectionEvent
from protocol.keys import Keys
from protocol.streams import encode_ack, encode_event

CONFIG = RealtimeSessionConfig(instructions="help")
KEYS = Keys("vgtest")
FRAME = b"\x01\x00" * 480


async def _live_call(start_worker: Any, make_client: Any, recorder: Any, tag: str) -> Any:
    await start_worker()
    client = make_client(tag=tag)
    events = recorder(client)
    await client.connect(CONFIG)
    client.send_audio(FRAME)
    await events.wait_for(lambda: events.of("audio"))
    return client, events


async def _lost_within(events: Any, client: Any, started: float) -> float:
    await events.wait_for(lambda: events.of("closed"), within=3 * SESSION_CHECK_S + 1)
    took = time.monotonic() - started
    names = [name for name, _ in events.events]
    errors = events.of("error")
    assert errors and errors[-1].code == SESSION_LOST and not errors[-1].recoverable
    assert names.index("closed") > len(names) - 1 - names[::-1].index("error")  # error first
    assert events.of("closed")[-1].reason == SESSION_LOST
    assert not client.connected
    with pytest.raises(NotConnectedError, match=r"gone|closed without"):
        client.send_audio(FRAME)
    return took


async def _keys_without_expiry(redis: Any) -> list[bytes]:
    return [key async for key in redis.scan_iter(match="vgtest:*") if await redis.pttl(key) == -1]


async def test_redis_losing_its_data_ends_the_session_for_the_caller(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any, server: Any
) -> None:
    client, events = await _live_call(start_worker, make_client, recorder, "flushed")
    redis = make_redis()
    await redis.flushall()  # a Redis restart without persistence
    started = time.monotonic()
    sent = 0
    while client.connected and sent < 100:  # the caller keeps talking into the void
        client.send_audio(FRAME)  # its first append finds no stream: reported at once
        sent += 1
        await asyncio.sleep(0.02)
    took = await _lost_within(events, client, started)
    assert took < 2 * SESSION_CHECK_S + 1
    assert await _keys_without_expiry(redis) == []
    assert not await redis.exists(KEYS.session(client.session_id).input)


async def test_an_epoch_that_went_back_ends_the_session_for_the_caller(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    client, events = await _live_call(start_worker, make_client, recorder, "older")
    redis = make_redis()
    keys = KEYS.session(client.session_id)
    # an older copy of the record (say, a restored snapshot) with epoch 0, no lease
    await redis.delete(keys.lease)
    await redis.hset(keys.state, mapping={"epoch": "0", "status": "pending"})
    started = time.monotonic()
    await _lost_within(events, client, started)


async def test_a_record_closed_without_a_closed_event_ends_the_session_for_the_caller(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    client, events = await _live_call(start_worker, make_client, recorder, "closedby")
    redis = make_redis()
    await redis.hset(KEYS.session(client.session_id).state, "status", "closed")
    started = time.monotonic()
    took = await _lost_within(events, client, started)
    assert took >= SESSION_CHECK_S * 0.9  # one more check gives the event a chance first


async def test_a_normal_close_is_not_reported_as_lost(
    start_worker: Any, make_client: Any, recorder: Any
) -> None:
    client, events = await _live_call(start_worker, make_client, recorder, "normal")
    await asyncio.sleep(2.5 * SESSION_CHECK_S)  # several checks of a healthy session
    assert client.connected and not events.of("error")
    await client.disconnect()
    await asyncio.sleep(1.5 * SESSION_CHECK_S)
    assert [e.code for e in events.of("error")] == []
    assert len(events.of("closed")) == 1


async def test_connect_with_the_id_of_a_live_session_leaves_that_session_alone(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    client, events = await _live_call(start_worker, make_client, recorder, "owner")
    intruder = make_client(tag="intruder", session_id=client.session_id)
    with pytest.raises(UsageError, match="already exists"):
        await intruder.connect(CONFIG)
    redis = make_redis()
    status = await redis.hget(KEYS.session(client.session_id).state, "status")
    assert status == b"live"
    assert await client.ping() is True
    client.send_audio(FRAME)
    await events.wait_for(lambda: len(events.of("audio")) >= 2)


async def test_a_closed_read_with_the_connect_ack_ends_the_connect_as_closed(
    make_client: Any, recorder: Any, make_redis: Any
) -> None:
    # no worker: the test writes what a worker whose provider closed at once would write
    client = make_client(session_id="closes-at-once")
    events = recorder(client)
    connecting = asyncio.create_task(client.connect(CONFIG))
    redis = make_redis()
    keys = KEYS.session("closes-at-once")
    while not (requests := await redis.xrange(KEYS.create)):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    request_id = requests[-1][0].decode()  # the connect ack answers the create request
    await asyncio.sleep(0.05)  # the client follows its output stream
    closed = ConnectionEvent(reason="provider closed", code=1008)
    async with redis.pipeline(transaction=True) as pipe:  # one batch for the reader
        pipe.xadd(keys.output, encode_event("connected", ConnectionEvent(), epoch=1))  # type: ignore[arg-type]
        pipe.xadd(keys.output, encode_ack(request_id, epoch=1, result={"capabilities": {}}))  # type: ignore[arg-type]
        pipe.xadd(keys.output, encode_event("closed", closed, epoch=1))  # type: ignore[arg-type]
        await pipe.execute()
    await asyncio.wait_for(connecting, 5)  # resolves (the provider did accept the session) ...
    assert not client.connected  # ... to a closed client, never a live one
    assert [name for name, _ in events.events] == ["connected", "closed"]
    with pytest.raises(NotConnectedError):
        client.send_audio(FRAME)
    assert orjson.loads(orjson.dumps(events.of("closed")[0].code)) == 1008


async def test_concurrent_disconnects_all_return_after_the_closed_event(
    start_worker: Any, make_client: Any, recorder: Any
) -> None:
    client, _ = await _live_call(start_worker, make_client, recorder, "twice")
    order: list[str] = []
    client.on("closed", lambda _: order.append("closed"))

    async def end(name: str) -> None:
        await client.disconnect()
        order.append(name)

    await asyncio.gather(end("first"), end("second"))
    assert order == ["closed", "first", "second"]
