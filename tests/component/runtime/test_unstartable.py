"""A session record no worker can start is closed with an error that says why, once.

Before: a record with a config field the model does not know (written by a producer that is
not ``RedisRealtimeClient``) made the job die with a traceback, the status stayed ``pending``
and the reaper enqueued epoch 2, 3, 4... forever. Now the worker closes it (``error`` with the
validation message, the failed connect acknowledgement, ``closed``), the reaper gives up on a
session that took ``MAX_START_ATTEMPTS`` lease epochs without going live, and one session's bad
record never stops the reaper for the others.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from protocol.keys import Keys
from protocol.streams import (
    MAX_START_ATTEMPTS,
    SessionRecord,
    decode_output,
    encode_record,
)
from redisio.jobs import enqueue_session
from redisio.metrics import REGISTRY

KEYS = Keys("vgtest")


def failures(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("voicegrid_session_start_failures_total", {"reason": reason})
        or 0.0
    )


async def _write_record(redis: Any, sid: str, **changes: Any) -> None:
    """A session record as another producer might write it, enqueued like the ingress does."""
    record = SessionRecord(provider="fake", model="fake-model", config={})
    fields = encode_record(record)
    fields.update({k: v if isinstance(v, bytes) else str(v).encode() for k, v in changes.items()})
    keys = KEYS.session(sid)
    await redis.hset(keys.state, mapping=fields)
    await redis.zadd(KEYS.live, {sid: int(time.time() * 1000)})


async def _output(redis: Any, sid: str) -> list[Any]:
    return [decode_output(f) for _, f in await redis.xrange(KEYS.session(sid).output)]


async def _closed(redis: Any, sid: str, within: float = 5.0) -> list[Any]:
    async with asyncio.timeout(within):
        while await redis.hget(KEYS.session(sid).state, "status") != b"closed":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return await _output(redis, sid)


async def test_a_config_the_model_does_not_know_closes_the_session_with_the_reason(
    start_worker: Any, make_redis: Any
) -> None:
    await start_worker()
    redis = make_redis()
    before = failures("invalid_record")
    await _write_record(redis, "bad-config", config=orjson.dumps({"no_such_field": 1}))
    await enqueue_session(redis, KEYS, "bad-config", 1)
    entries = await _closed(redis, "bad-config")
    names = [getattr(e, "name", "ack") for e in entries]
    assert names == ["error", "ack", "closed"]
    assert entries[0].payload.code == "invalid_record" and not entries[0].payload.recoverable
    assert "no_such_field" in entries[0].payload.message
    assert not entries[1].ok and "no_such_field" in str(entries[1].error)
    assert failures("invalid_record") == before + 1
    # the reaper never brings it back: still epoch 1, nothing new queued
    await asyncio.sleep(1.5)
    assert await redis.hget(KEYS.session("bad-config").state, "epoch") == b"1"
    assert len(await _output(redis, "bad-config")) == 3
    assert await redis.zscore(KEYS.live, "bad-config") is None
    assert 0 < await redis.pttl(KEYS.session("bad-config").state) <= 300_000


async def test_a_corrupted_cursor_closes_the_session_instead_of_poisoning_the_read(
    start_worker: Any, make_redis: Any, make_client: Any, recorder: Any
) -> None:
    await start_worker()
    good = make_client(tag="neighbour")
    events = recorder(good)
    await good.connect({})
    redis = make_redis()
    await _write_record(redis, "bad-cursor", cursor=b"99999999999999999999-0")
    await enqueue_session(redis, KEYS, "bad-cursor", 1)
    entries = await _closed(redis, "bad-cursor")
    assert "cursor" in entries[0].payload.message
    good.send_audio(b"\x01\x00" * 480)  # the worker's shared read still serves its neighbour
    await events.wait_for(lambda: events.of("audio"))


async def test_the_reaper_gives_up_after_the_start_attempts(
    start_worker: Any, make_redis: Any
) -> None:
    redis = make_redis()
    before = failures("attempts")
    # a session that took MAX_START_ATTEMPTS epochs and never went live (its workers died)
    await _write_record(redis, "never-live", epoch=MAX_START_ATTEMPTS, starts=MAX_START_ATTEMPTS)
    # and a session whose record has an epoch nobody can count from
    await _write_record(redis, "bad-epoch", epoch=b"\xd9\xa1")
    # a healthy one whose owner died: must still be re-enqueued by the same reaper pass
    await _write_record(redis, "healthy", status="live", epoch=1, starts=0)
    await start_worker()
    for sid in ("never-live", "bad-epoch"):
        entries = await _closed(redis, sid)
        assert [getattr(e, "name", "ack") for e in entries] == ["error", "ack", "closed"]
        assert entries[0].payload.code == "start_failed"
    assert "3 workers took it" in (await _output(redis, "never-live"))[0].payload.message
    assert failures("attempts") == before + 2
    async with asyncio.timeout(5):
        while await redis.hget(KEYS.session("healthy").state, "epoch") != b"2":  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # taken over by epoch 2


async def test_starts_count_epochs_and_going_live_resets_them(
    start_worker: Any, make_client: Any, make_redis: Any
) -> None:
    await start_worker()
    client = make_client(tag="starts")
    await client.connect({})
    redis = make_redis()
    state = KEYS.session(client.session_id).state
    async with asyncio.timeout(5):
        while await redis.hget(state, "starts") != b"0":  # noqa: ASYNC110 - reset with 'live'
            await asyncio.sleep(0.02)
    assert await redis.hget(state, "status") == b"live"


async def test_provider_options_a_caller_may_not_set_close_the_session_with_the_reason(
    start_worker: Any, make_client: Any
) -> None:
    await start_worker()
    client = make_client(tag="steer", recycle_after_s=0.01)  # the ingress trusts its app ...
    try:
        await client.connect({})
    except Exception as exc:  # ... the worker holds every record to the allow-list
        assert "'recycle_after_s' is not one a caller may set" in str(exc)
    else:
        raise AssertionError("a provider option outside the allow-list was accepted")
    assert not client.connected
