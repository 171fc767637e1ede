"""Creating a session with nothing but Redis commands (``<ns>:create``, docs/streams.md).

A producer in any language posts one ``XADD`` and reads the answer on the session's output
stream; these tests play that producer with plain commands (no voicegrid code on the producer
side), plus the cases a producer cannot get right: bad requests, taken ids, a worker that dies
holding a request, a request nobody took in time, a producer that gives up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from ingress import RedisRealtimeClient
from protocol.create import CREATE_GROUP, CREATE_MAX_AGE_S
from protocol.errors import SessionTimeout, UsageError
from protocol.keys import Keys
from redisio.jobs import enqueue_session

from ...support.prometheus import registry_value
from ...support.timing import scaled
from ..conftest import NAMESPACE

KEYS = Keys(NAMESPACE)
FRAME = b"\x01\x02" * 480  # 20 ms of 24 kHz PCM16


def create_fields(sid: str, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "v": "1",
        "sid": sid,
        "provider": "fake",
        "model": "fake-model",
        "config": orjson.dumps({"instructions": "Be brief."}).decode(),
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


async def read_out(redis: Any, sid: str, until: Any, within: float = 5.0) -> list[Any]:
    """Entries of the session's output stream as (id, {name: value}) until ``until(entries)``."""
    stream = KEYS.session(sid).output
    entries: list[Any] = []
    last = "0-0"
    async with asyncio.timeout(scaled(within)):
        while not until(entries):
            reply = await redis.xread({stream: last}, block=200)
            for _, batch in reply or []:
                for entry_id, fields in batch:
                    last = entry_id.decode()
                    entries.append((last, {k.decode(): v for k, v in fields.items()}))
    return entries


async def polled(check: Callable[[], Awaitable[Any]], within: float = 5.0) -> Any:
    """Poll Redis until ``check()`` returns something truthy; return it."""
    async with asyncio.timeout(scaled(within)):
        while not (found := await check()):  # noqa: ASYNC110 - Redis state has no event here
            await asyncio.sleep(0.02)
    return found


def client_with_timeout(make_redis: Any, session_id: str, timeout_s: float) -> RedisRealtimeClient:
    return RedisRealtimeClient(
        "redis://fake/0",
        provider="fake",
        model="fake-model",
        namespace=NAMESPACE,
        session_id=session_id,
        connect_timeout_s=timeout_s,
        redis=make_redis(),
    )


def ack_for(request_id: str) -> Any:
    def found(entries: list[Any]) -> bool:
        return any(f.get("k") == b"k" and f.get("ref") == request_id.encode() for _, f in entries)

    return found


async def test_a_session_made_with_plain_redis_commands_runs_end_to_end(
    start_worker: Any, make_redis: Any, fakes: Any
) -> None:
    await start_worker()
    redis = make_redis()
    sid = f"plain-{uuid.uuid4().hex[:8]}"
    request_id = (await redis.xadd(KEYS.create, create_fields(sid))).decode()
    entries = await read_out(redis, sid, ack_for(request_id))
    ack = next(f for _, f in entries if f.get("k") == b"k")
    assert ack["ok"] == b"1"
    assert orjson.loads(ack["b"])["capabilities"]["config_update"] == "in-place"
    # audio in, echoed audio out; then the documented disconnect command ends it
    session = KEYS.session(sid)
    await redis.xadd(session.input, {"v": "1", "ts": "1", "k": "a", "d": FRAME})
    await read_out(redis, sid, lambda es: any(f.get("e") == b"audio" for _, f in es))
    bye = (
        await redis.xadd(
            session.input, {"v": "1", "ts": "1", "k": "c", "c": "disconnect", "b": "{}"}
        )
    ).decode()
    entries = await read_out(redis, sid, ack_for(bye))
    assert any(f.get("e") == b"closed" for _, f in entries)
    assert fakes["default"][0].config.instructions == "Be brief."
    # handled requests are acknowledged and deleted
    assert await redis.xlen(KEYS.create) == 0
    assert (await redis.xpending(KEYS.create, CREATE_GROUP))["pending"] == 0


@pytest.mark.parametrize(
    ("changes", "code", "needle"),
    [
        ({"config": '{"voice": 7}'}, "invalid_config", "voice"),
        ({"provider": "nosuch"}, "invalid_request", "'nosuch'; expected one of"),
        ({"options": '{"url": "ws://evil"}'}, "invalid_request", "['url']"),
    ],
)
async def test_a_bad_request_is_answered_on_its_output_stream(
    start_worker: Any, make_redis: Any, fakes: Any, changes: dict[str, Any], code: str, needle: str
) -> None:
    await start_worker()
    redis = make_redis()
    rejected_before = registry_value("voicegrid_create_requests_total", outcome="rejected")
    sid = f"bad-{uuid.uuid4().hex[:8]}"
    request_id = (await redis.xadd(KEYS.create, create_fields(sid, **changes))).decode()
    entries = await read_out(redis, sid, lambda es: any(f.get("e") == b"closed" for _, f in es))
    kinds = [(f.get("e") or f.get("k")).decode() for _, f in entries]
    assert kinds == ["error", "k", "closed"]
    error = orjson.loads(entries[0][1]["b"])
    assert (error["code"], error["recoverable"]) == (code, False)
    assert needle in error["message"]
    ack = entries[1][1]
    assert (ack["ref"].decode(), ack["ok"]) == (request_id, b"0")
    assert orjson.loads(ack["b"])["type"] == "ConfigError"
    state = KEYS.session(sid).state
    assert await redis.hget(state, "status") == b"closed"
    assert 0 < await redis.pttl(state) <= 300_000
    assert not fakes  # no provider client was made
    assert registry_value("voicegrid_create_requests_total", outcome="rejected") == (
        rejected_before + 1
    )


@pytest.mark.parametrize("sid", ["has space", "x" * 65])
async def test_an_invalid_session_id_is_answered_on_the_rejected_stream(
    start_worker: Any, make_redis: Any, sid: str
) -> None:
    await start_worker()
    redis = make_redis()
    request_id = await redis.xadd(KEYS.create, create_fields(sid))

    (_, fields), *_ = await polled(lambda: redis.xrange(KEYS.create_rejected))
    assert fields[b"req"] == request_id
    assert fields[b"code"] == b"invalid_session_id"
    assert fields[b"type"] == b"InvalidSessionId"
    assert b"1-64 characters" in fields[b"message"]


async def test_an_id_in_use_is_refused_without_touching_that_session(
    start_worker: Any, make_redis: Any, make_client: Any, recorder: Any
) -> None:
    await start_worker()
    redis = make_redis()
    client = make_client(session_id="taken-1")
    events = recorder(client)
    await client.connect({})
    output = KEYS.session("taken-1").output
    before = await redis.xlen(output)
    request_id = await redis.xadd(KEYS.create, create_fields("taken-1"))
    (_, fields), *_ = await polled(lambda: redis.xrange(KEYS.create_rejected))
    assert (fields[b"req"], fields[b"code"]) == (request_id, b"session_exists")
    assert await redis.xlen(output) == before
    assert client.connected and not events.of("error")
    # the Python client refuses a taken id at once
    with pytest.raises(UsageError, match="already exists"):
        await make_client(session_id="taken-1").connect({})
    assert client.connected
    await client.disconnect()


async def test_the_python_client_reports_a_rejection_from_the_rejected_stream(
    start_worker: Any, make_redis: Any
) -> None:
    """The id is taken between the client's check and the worker's claim: the answer is on the
    rejected stream, and ``connect`` raises it instead of waiting for its timeout."""
    redis = make_redis()
    client = client_with_timeout(make_redis, "raced-1", scaled(10))
    connecting = asyncio.create_task(client.connect({}))
    await polled(lambda: redis.xlen(KEYS.create))
    await redis.hset(KEYS.session("raced-1").state, "v", "1")  # someone else's record
    await start_worker()
    started = time.monotonic()
    with pytest.raises(UsageError, match="already exists"):
        await connecting
    assert time.monotonic() - started < scaled(3)


async def test_handling_a_request_twice_makes_one_session(
    start_worker: Any, make_redis: Any, fakes: Any
) -> None:
    worker = await start_worker()
    redis = make_redis()
    sid = f"twice-{uuid.uuid4().hex[:8]}"
    request_id = (await redis.xadd(KEYS.create, create_fields(sid))).decode()
    await read_out(redis, sid, ack_for(request_id))
    fields = {k.encode(): str(v).encode() for k, v in create_fields(sid).items()}
    await worker.runtime.creator.handle(request_id, fields)  # e.g. taken over after a stall
    await asyncio.sleep(scaled(0.3))
    assert len(fakes["default"]) == 1
    assert await redis.xrange(KEYS.create_rejected) == []


async def test_a_request_held_by_a_dead_worker_is_taken_over(
    start_worker: Any, make_redis: Any
) -> None:
    redis = make_redis()
    await redis.xgroup_create(KEYS.create, CREATE_GROUP, id="0", mkstream=True)
    sid = f"orphan-{uuid.uuid4().hex[:8]}"
    request_id = (await redis.xadd(KEYS.create, create_fields(sid))).decode()
    # a worker read it and died before handling it
    taken = await redis.xreadgroup(CREATE_GROUP, "dead-worker", {KEYS.create: ">"}, count=1)
    assert taken
    await start_worker()
    entries = await read_out(redis, sid, ack_for(request_id), within=8)
    assert next(f for _, f in entries if f.get("k") == b"k")["ok"] == b"1"


async def test_a_request_nobody_took_in_time_is_not_started(
    start_worker: Any, make_redis: Any, fakes: Any
) -> None:
    redis = make_redis()
    sid = f"late-{uuid.uuid4().hex[:8]}"
    old_ms = int((time.time() - CREATE_MAX_AGE_S - 5) * 1000)
    request_id = f"{old_ms}-0"
    await redis.xadd(KEYS.create, create_fields(sid), id=request_id)
    await start_worker()
    entries = await read_out(redis, sid, lambda es: any(f.get("e") == b"closed" for _, f in es))
    error = orjson.loads(entries[0][1]["b"])
    assert error["code"] == "request_expired"
    assert orjson.loads(entries[1][1]["b"])["type"] == "SessionTimeout"
    assert not fakes


async def test_a_client_that_gave_up_leaves_nothing_to_start(
    start_worker: Any, make_redis: Any, fakes: Any
) -> None:
    redis = make_redis()
    client = client_with_timeout(make_redis, "gave-up", 0.3)
    with pytest.raises(SessionTimeout):
        await client.connect({})
    worker = await start_worker()

    async def handled() -> bool:
        return await redis.xlen(KEYS.create) == 0

    await polled(handled)
    await asyncio.sleep(scaled(0.3))
    assert not fakes and not worker.runtime.sessions
    assert await redis.hget(KEYS.session("gave-up").state, "status") == b"closed"


async def hand_written(redis: Any, sid: str, **fields: str) -> Any:
    """A session record written by hand (not through a create request), and its job."""
    keys = KEYS.session(sid)
    record = {"v": "1", "provider": "fake", "model": "m", "config": "{}", "status": "pending"}
    await redis.hset(keys.state, mapping={**record, **fields})
    await enqueue_session(redis, KEYS, sid, 1)
    return keys


async def test_a_record_that_cannot_be_read_is_closed_visibly(
    start_worker: Any, make_redis: Any
) -> None:
    """A record written by hand with a broken field: ``error`` + failed ``connect`` ack +
    ``closed``, not a silent delete (and empty optional fields take their defaults)."""
    await start_worker()
    redis = make_redis()
    broken = await hand_written(redis, "broken-1", config="{oops")
    entries = await read_out(
        redis, "broken-1", lambda es: any(f.get("e") == b"closed" for _, f in es)
    )
    error = orjson.loads(entries[0][1]["b"])
    assert error["code"] == "malformed_record" and "'config' is not JSON" in error["message"]
    assert entries[1][1]["ref"] == b"connect" and entries[1][1]["ok"] == b"0"
    assert await redis.hget(broken.state, "status") == b"closed"

    await hand_written(redis, "tolerant-1", pstate="", conv="", caps="")
    entries = await read_out(redis, "tolerant-1", lambda es: any(f.get("k") == b"k" for _, f in es))
    assert next(f for _, f in entries if f.get("k") == b"k")["ok"] == b"1"


async def test_a_disconnect_sent_before_any_worker_ends_the_session_at_its_start(
    start_worker: Any, make_redis: Any
) -> None:
    """How a producer without the claim script gives up (docs/streams.md, "Giving up")."""
    redis = make_redis()
    sid = f"quit-{uuid.uuid4().hex[:8]}"
    request_id = (await redis.xadd(KEYS.create, create_fields(sid))).decode()
    session = KEYS.session(sid)
    bye = {"v": "1", "ts": "1", "k": "c", "c": "disconnect", "b": "{}"}
    bye_id = (await redis.xadd(session.input, bye)).decode()
    await start_worker()
    entries = await read_out(redis, sid, ack_for(bye_id))
    refs = [f["ref"].decode() for _, f in entries if f.get("k") == b"k"]
    assert refs == [request_id, bye_id]
    assert any(f.get("e") == b"closed" for _, f in entries)
    assert await redis.hget(session.state, "status") == b"closed"


async def test_a_request_the_worker_fails_on_is_answered_once_not_retried_forever(
    start_worker: Any, make_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.creation

    def broken(_fields: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(worker.creation, "decode_create_request", broken)
    await start_worker()
    redis = make_redis()
    request_id = await redis.xadd(KEYS.create, create_fields("buggy-1"))
    (_, fields), *_ = await polled(lambda: redis.xrange(KEYS.create_rejected))
    assert (fields[b"req"], fields[b"code"]) == (request_id, b"internal_error")
    assert b"a bug" in fields[b"message"]

    async def acknowledged() -> bool:
        pending = await redis.xpending(KEYS.create, CREATE_GROUP)
        return pending["pending"] == 0 and await redis.xlen(KEYS.create) == 0

    await polled(acknowledged)
