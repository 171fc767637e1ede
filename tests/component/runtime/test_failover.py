"""Ownership and failover with in-process workers: takeover, hand-off, fencing, the reaper."""

from __future__ import annotations

import asyncio
from typing import Any

from protocol import ErrorEvent, RealtimeSessionConfig, RealtimeToolResponse
from protocol.keys import Keys

from ...support.prometheus import registry_value
from ...support.timing import scaled

CONFIG = RealtimeSessionConfig(instructions="help")
KEYS = Keys("vgtest")


def frame(n: int) -> bytes:
    return n.to_bytes(2, "little") * 160


async def test_a_crashed_owner_is_taken_over_and_no_frame_is_lost(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    owner = await start_worker()
    client = make_client(tag="crash")
    events = recorder(client)
    await client.connect(CONFIG)
    for n in range(1, 21):
        client.send_audio(frame(n))
    await events.wait_for(lambda: len(events.of("audio")) == 20)
    takeovers = registry_value("voicegrid_takeovers_total", reason="lease_expired")
    redis = make_redis()
    state_key = KEYS.session(client.session_id).state

    async def saved_provider_state() -> None:  # exported with the lease renewals
        while await redis.hget(state_key, "pstate") != b'{"frames_seen":20}':  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(saved_provider_state(), scaled(5))

    await owner.crash()
    successor = await start_worker()
    for n in range(21, 41):  # the caller keeps talking while nobody owns the session
        client.send_audio(frame(n))
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    reconnected = events.of("reconnected")[0]
    assert reconnected.strategy == "resumed"  # the fake provider imported its exported state
    assert [e.reason for e in events.of("reconnecting")] == ["takeover"]
    assert client.session_id in successor.runtime.sessions
    new_provider = fakes["crash"][1]
    assert new_provider.imported == {"frames_seen": 20}
    await events.wait_for(lambda: any(a.data == frame(40) for a in events.of("audio")))

    seen = fakes["crash"][0].frames + new_provider.frames
    # every frame reached a provider, in order; only the crash window may repeat
    assert [f for f in dict.fromkeys(seen)] == [frame(n) for n in range(1, 41)]
    assert registry_value("voicegrid_takeovers_total", reason="lease_expired") == takeovers + 1
    output = await redis.xrange(KEYS.session(client.session_id).output)
    epochs = [fields[b"ep"] for _, fields in output]
    assert epochs == sorted(epochs) and epochs[-1] == b"2"


async def test_a_takeover_without_provider_state_replays_the_conversation(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    owner = await start_worker()
    client = make_client(tag="replay", echo=False)
    events = recorder(client)
    await client.connect(CONFIG)
    client.request_response("call a tool")
    await events.wait_for(lambda: events.of("tool-call"))
    client.send_tool_response([RealtimeToolResponse(call_id="call-1", output="sunny")])
    await events.wait_for(lambda: events.of("response-done"))
    keys = KEYS.session(client.session_id)
    redis = make_redis()
    # make the saved provider state empty so the runtime's own replay is used
    await owner.crash()
    await redis.hset(keys.state, "pstate", b"{}")
    await start_worker()
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    assert events.of("reconnected")[0].strategy == "replayed"
    replayed = fakes["replay"][1].config
    assert replayed is not None
    assert replayed.instructions.startswith("help\n\n")
    assert "weather" in replayed.instructions and "sunny" in replayed.instructions
    # the tool result the first owner applied is not applied again
    assert fakes["replay"][1].tool_responses == []


async def test_drain_hands_the_session_over_exactly_once(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any
) -> None:
    first = await start_worker()
    client = make_client(tag="drain")
    events = recorder(client)
    await client.connect(CONFIG)
    second = await start_worker()
    for n in range(1, 11):
        client.send_audio(frame(n))
    await events.wait_for(lambda: len(events.of("audio")) == 10)
    handoffs = registry_value("voicegrid_handoffs_total", reason="drain")

    stopping = asyncio.create_task(first.stop())
    await events.wait_for(lambda: events.of("reconnected"), within=5)
    await stopping
    assert events.of("reconnecting")[0].reason == "handoff"
    assert client.session_id in second.runtime.sessions
    for n in range(11, 21):
        client.send_audio(frame(n))
    await events.wait_for(lambda: any(a.data == frame(20) for a in events.of("audio")))
    seen = fakes["drain"][0].frames + fakes["drain"][1].frames
    assert seen == [frame(n) for n in range(1, 21)]  # exact cursor: no frame twice
    assert fakes["drain"][0].disconnected
    assert registry_value("voicegrid_handoffs_total", reason="drain") == handoffs + 1
    assert not [e for e in events.of("closed")]


async def test_a_worker_that_lost_its_lease_is_fenced_and_stops(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    stale = await start_worker()
    client = make_client(tag="fence")
    events = recorder(client)
    await client.connect(CONFIG)
    runtime = stale.runtime
    runner = runtime.sessions[client.session_id]
    fenced = registry_value("voicegrid_sessions_ended_total", provider="fake", reason="fenced")

    # "SIGSTOP": the stale worker stops renewing; another worker takes the session over
    renewer = next(t for t in runtime._tasks if t.get_name() == "voicegrid-renewer")
    renewer.cancel()
    assert runtime.arq is not None
    runtime.arq.allow_pick_jobs = False  # a stopped process picks no jobs either
    await start_worker()
    await events.wait_for(lambda: events.of("reconnected"), within=10)

    # "SIGCONT": its next write is rejected by the fence and it stops the session
    runner._emit("error", ErrorEvent(code="stale", message="late"))
    await asyncio.wait_for(runner._ended.wait(), scaled(5))
    assert runner.end_reason == "fenced"
    assert fakes["fence"][0].disconnected
    output = await make_redis().xrange(KEYS.session(client.session_id).output)
    assert not [f for _, f in output if b"stale" in f.get(b"b", b"")]
    await asyncio.wait_for(asyncio.shield(_until_gone(runtime, client.session_id)), scaled(5))
    assert (
        registry_value("voicegrid_sessions_ended_total", provider="fake", reason="fenced")
        == fenced + 1
    )
    client.send_audio(frame(7))
    await events.wait_for(lambda: any(a.data == frame(7) for a in events.of("audio")))
    assert fakes["fence"][0].frames == [] and fakes["fence"][1].frames == [frame(7)]


async def _until_gone(runtime: Any, session_id: str) -> None:
    async with runtime._ended:
        await runtime._ended.wait_for(lambda: session_id not in runtime.sessions)


async def test_metrics_and_health_endpoints(start_worker: Any, make_client: Any) -> None:
    worker = await start_worker(max_sessions=3)
    await make_client().connect(CONFIG)
    status, body = worker.http_status("/metrics")
    assert status == 200
    assert b"voicegrid_sessions_active 1.0" in body
    assert b"voicegrid_sessions_capacity 3.0" in body
    assert worker.http_status("/healthz")[0] == 200
    assert worker.http_status("/readyz") == (200, b"ready: 1/3 sessions\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.runtime.http.port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(b"ready: 1/3 sessions\n")


async def test_a_redis_outage_shorter_than_the_lease_loses_nothing(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, server: Any, wait_until: Any
) -> None:
    worker = await start_worker()
    client = make_client(tag="outage")
    events = recorder(client)
    await client.connect(CONFIG)
    client.send_audio(frame(1))
    await events.wait_for(lambda: len(events.of("audio")) == 1)
    server.connected = False  # every Redis command now fails with a connection error
    for n in range(2, 12):
        client.send_audio(frame(n))  # buffered by the ingress, never blocks
    # the outage lasts until the worker noticed it (well within the 1 s lease)
    await wait_until(lambda: worker.runtime.health.last_error != "", 2)
    server.connected = True
    await events.wait_for(lambda: len(events.of("audio")) == 11, within=10)
    assert fakes["outage"][0].frames == [frame(n) for n in range(1, 12)]
    assert len(fakes["outage"]) == 1  # no takeover was needed
    assert not events.of("reconnected")


def after_reconnected(events: Any) -> list[tuple[str, Any]]:
    """The events published after the first ``reconnected`` (a takeover's or a hand-off's)."""
    names = [name for name, _ in events.events]
    return events.events[names.index("reconnected") + 1 :]


async def until_checkpointed(redis: Any, session_id: str) -> None:
    """Until the owner saved its provider state and an input cursor past every frame sent
    (a takeover then re-sends nothing, so the fake model opens no new turn)."""
    keys = KEYS.session(session_id)
    async with asyncio.timeout(scaled(5)):
        while True:
            pstate, cursor = await redis.hmget(keys.state, ["pstate", "cursor"])
            newest = await redis.xrevrange(keys.input, count=1)
            if pstate not in (None, b"{}") and (not newest or cursor == newest[0][0]):
                return
            await asyncio.sleep(0.02)


async def open_response(redis: Any, session_id: str) -> bytes | None:
    value: bytes | None = await redis.hget(KEYS.session(session_id).state, "open_resp")
    return value


async def test_a_turn_cut_by_a_crash_is_closed_as_failed_exactly_once(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    owner = await start_worker()
    client = make_client(tag="cut")
    events = recorder(client)
    await client.connect(CONFIG)
    client.send_audio(frame(1))  # the fake model answers with audio of response r1
    await events.wait_for(lambda: events.of("audio"))
    redis = make_redis()
    # saved in the same fenced write as the audio that opened the turn
    assert await open_response(redis, client.session_id) == b"r1"
    await until_checkpointed(redis, client.session_id)
    await owner.crash()
    successor = await start_worker()
    await events.wait_for(lambda: events.of("response-done"), within=10)
    closing = after_reconnected(events)[0]
    assert closing[0] == "response-done"
    assert (closing[1].response_id, closing[1].status) == ("r1", "failed")
    assert await open_response(redis, client.session_id) == b""

    # a second takeover does not close the same turn again
    await until_checkpointed(redis, client.session_id)
    await successor.crash()
    await start_worker()
    await events.wait_for(lambda: len(events.of("reconnected")) == 2, within=10)
    client.request_response("hello")  # a later event proves the new owner is live
    await events.wait_for(lambda: len(events.of("response-done")) == 2)
    assert [(e.response_id, e.status) for e in events.of("response-done")] == [
        ("r1", "failed"),
        ("r1", "completed"),
    ]


async def test_a_completed_turn_is_not_closed_again_after_a_crash(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    owner = await start_worker()
    client = make_client(tag="done")
    events = recorder(client)
    await client.connect(CONFIG)
    client.send_audio(frame(1))  # opens r1
    client.request_response("hello")  # the fake model completes r1
    await events.wait_for(lambda: events.of("response-done"))
    assert await open_response(make_redis(), client.session_id) == b""
    await owner.crash()
    await start_worker()
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    client.request_response("again")
    await events.wait_for(lambda: len(events.of("response-done")) == 2)
    assert [e.status for e in events.of("response-done")] == ["completed", "completed"]


async def test_a_hand_off_closes_the_turn_the_old_owner_left_open(
    start_worker: Any, make_client: Any, recorder: Any
) -> None:
    first = await start_worker()
    client = make_client(tag="handcut")
    events = recorder(client)
    await client.connect(CONFIG)
    await start_worker()
    client.send_audio(frame(1))
    await events.wait_for(lambda: events.of("audio"))
    await first.stop()
    await events.wait_for(lambda: events.of("response-done"), within=5)
    closing = after_reconnected(events)[0]
    assert closing[0] == "response-done"
    assert (closing[1].response_id, closing[1].status) == ("r1", "failed")
    assert events.of("reconnecting")[0].reason == "handoff"


async def test_pending_tool_calls_are_cancelled_after_the_workers_own_replay(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    owner = await start_worker()
    client = make_client(tag="lostcall", echo=False)
    events = recorder(client)
    await client.connect(CONFIG)
    client.request_response("call a tool")
    await events.wait_for(lambda: events.of("tool-call"))
    keys = KEYS.session(client.session_id)
    redis = make_redis()

    async def call_saved() -> None:
        while b"call-1" not in (await redis.hget(keys.state, "conv") or b""):  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(call_saved(), scaled(5))
    await owner.crash()  # before the application answered the call
    await redis.hset(keys.state, "pstate", b"{}")  # the provider state cannot be restored
    await start_worker()
    await events.wait_for(lambda: events.of("tool-call-cancelled"), within=10)
    assert events.of("reconnected")[0].strategy == "replayed"
    assert after_reconnected(events)[0][0] == "tool-call-cancelled"
    assert events.of("tool-call-cancelled")[0].call_ids == ["call-1"]

    # the late result is dropped, not sent to a provider session that never saw the call
    client.send_tool_response([RealtimeToolResponse(call_id="call-1", output="late")])
    client.request_response("hello")  # applied after the dropped result, in order
    await events.wait_for(lambda: events.of("response-done"))
    assert fakes["lostcall"][1].tool_responses == []
    assert fakes["lostcall"][1].requests == ["hello"]
    assert len(events.of("tool-call-cancelled")) == 1


async def test_pending_tool_calls_stay_valid_when_the_client_restored_its_session(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    owner = await start_worker()
    client = make_client(tag="keptcall", echo=False)
    events = recorder(client)
    await client.connect(CONFIG)
    client.request_response("call a tool")
    await events.wait_for(lambda: events.of("tool-call"))
    await until_checkpointed(make_redis(), client.session_id)
    await owner.crash()
    await start_worker()
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    assert events.of("reconnected")[0].strategy == "resumed"  # import_state restored it
    client.send_tool_response([RealtimeToolResponse(call_id="call-1", output="sunny")])
    await events.wait_for(lambda: events.of("response-done"))
    assert [r.call_id for r in fakes["keptcall"][1].tool_responses] == ["call-1"]
    assert not events.of("tool-call-cancelled")
