"""Gemini sessions through the runtime: ingress -> Redis (fakeredis) -> in-process worker ->
GeminiSimulator.

Caller frames are 20 ms of 16 kHz PCM16 (Gemini's native rate, so the client forwards them
byte for byte) and carry their sequence number, so the simulator's decoded input shows which
frame reached which provider connection, and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from protocol import (
    AudioFormat,
    ErrorEvent,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ToolDefinition,
)
from protocol.keys import Keys
from protocol.options import parse_caller_options
from providers.simulator import GeminiSimulator, SimScript, ToolCallScript
from redisio.metrics import REGISTRY

from ...support.frames import frame_numbers, numbered_frame
from ...support.timing import scaled

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
KEYS = Keys("vgtest")
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CONFIG = RealtimeSessionConfig(
    instructions="You are a helpful agent.",
    tools=[WEATHER],
    input_audio=AudioFormat(encoding="pcm16", sample_rate=16000),
    output_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
)
FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16


def frame(seq: int, *, speech: bool = False) -> bytes:
    """A numbered caller frame: loud enough for the simulator's VAD, or silence."""
    return numbered_frame(seq, FRAME_BYTES, speech=speech)


def utterance(first: int) -> list[bytes]:
    """400 ms of speech then 500 ms of silence (the simulator's VAD ends the turn), numbered
    from ``first``."""
    return [frame(first + i, speech=i < 20) for i in range(45)]


async def speak(client: Any, first: int) -> None:
    """:func:`utterance` in real time, 20 ms per frame, as a caller speaks. A Gemini Developer
    API handle that arrives within ``resume_margin_s`` of a frame may or may not include it, so
    a resume re-sends such frames: an utterance sent all at once just before a handle would
    reach a resumed session twice."""
    for data in utterance(first):
        client.send_audio(data)
        await asyncio.sleep(0.02)


def frames_at(conn: Any) -> list[int]:
    """Sequence numbers of the caller frames one simulator connection received, in order."""
    return frame_numbers(conn.audio_in, FRAME_BYTES)


def all_frames(sim: GeminiSimulator) -> list[int]:
    return [seq for conn in sim.connections for seq in frames_at(conn)]


def frames_in_state(sim: GeminiSimulator) -> list[int]:
    """Sequence numbers of the caller frames the (only) session's current state holds."""
    return frame_numbers(sim.consumed_audio(), FRAME_BYTES)


def assert_taken_over_without_loss(before: list[int], after: list[int], later: range) -> None:
    """``before``: the frames the first owner's connection got (``0..n-1``, all of them);
    ``after``: the new connection's, which re-sends at most a tail of them (the trailing
    input cursor's window) and then gets every ``later`` frame once, in order."""
    assert before == list(range(len(before)))
    resent = after[: len(after) - len(later)]
    assert resent == list(range(len(before) - len(resent), len(before)))
    assert after[len(resent) :] == list(later)


def resumable_handles(conn: Any) -> list[str]:
    """The resumable handles the simulator issued on one connection, in order."""
    return [
        f["sessionResumptionUpdate"]["newHandle"]
        for f in conn.sent
        if f.get("sessionResumptionUpdate", {}).get("resumable")
    ]


def setup_of(conn: Any) -> dict[str, Any]:
    setup: dict[str, Any] = conn.received[0]["setup"]
    return setup


def instruction_of(conn: Any) -> str:
    text: str = setup_of(conn)["systemInstruction"]["parts"][0]["text"]
    return text


async def crash_with_provider_sockets(worker: Any) -> None:
    """SIGKILL, in-process: the worker stops without a drain, and the provider connections of
    its sessions die with it (their tasks are gone; the kernel drops the socket, no close
    frame). Gemini refuses a resume while the old socket is open, so this part matters."""
    clients = [r.client for r in worker.runtime.sessions.values() if r.client is not None]
    await worker.crash()
    for client in clients:
        for task in list(client._tasks):
            task.cancel()
        if client._link is not None:
            client._link.ws.transport.abort()


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSimulator]:
    script = SimScript(speed=20.0, tool_call=None)
    async with GeminiSimulator(script, validate=True) as simulator:
        yield simulator
        assert simulator.validation_errors == []
        assert simulator.internal_errors == []


@pytest.fixture
def gemini_client(make_client: Any) -> Any:
    def make() -> Any:
        return make_client(provider="gemini", model=MODEL)

    return make


async def saved_pstate(redis: Any, session_id: str) -> dict[str, Any]:
    """The provider state the owner exported into the session record."""
    raw = await redis.hget(KEYS.session(session_id).state, "pstate")
    state: dict[str, Any] = orjson.loads(raw) if raw else {}
    return state


async def until_saved(redis: Any, session_id: str, check: Callable[[dict[str, Any]], bool]) -> None:
    """Until the saved provider state passes ``check`` (it is saved within ~0.1 s)."""
    async with asyncio.timeout(scaled(5)):
        while not check(await saved_pstate(redis, session_id)):  # noqa: ASYNC110 - Redis state
            await asyncio.sleep(0.02)


async def wait_for_checkpoint(
    redis: Any, session_id: str, said: bytes = b"Sure, I can help"
) -> None:
    """Until the owner saved a conversation summary containing ``said`` and an input cursor
    past every frame sent so far (the takeover then re-sends nothing)."""
    keys = KEYS.session(session_id)
    async with asyncio.timeout(scaled(5)):
        while True:
            conv, cursor = await redis.hmget(keys.state, ["conv", "cursor"])
            newest = await redis.xrevrange(keys.input, count=1)
            if said in (conv or b"") and newest and cursor == newest[0][0]:
                return
            await asyncio.sleep(0.02)


async def test_a_turn_with_a_tool_round_trip(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any
) -> None:
    sim.script.tool_call = ToolCallScript(arguments={"city": "Paris"}, on_turn=1)
    await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG)
    assert client.capabilities.config_update == "resumed"  # the Gemini client's, via Redis
    assert client.capabilities.tool_call_cancellation
    setup = setup_of(sim.connections[0])
    assert setup["model"] == f"models/{MODEL}"
    assert setup["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"

    sent = utterance(0)
    for data in sent:
        client.send_audio(data)
    await events.wait_for(lambda: events.of("tool-call"))
    call = events.of("tool-call")[0]
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="sunny, 21 C")])
    await events.wait_for(lambda: events.of("response-done"))

    done = events.of("response-done")
    assert [d.status for d in done] == ["completed"]  # one model turn, one response-done
    finals = [t.text for t in events.of("transcript") if t.final]
    assert "caller speech" in finals
    assert any("sunny, 21 C" in t for t in finals)  # the model spoke the tool result
    audio = events.of("audio")
    assert audio and {a.sample_rate for a in audio} == {24000}
    responses = [f["toolResponse"] for f in sim.connections[0].received if "toolResponse" in f]
    assert responses == [
        {
            "functionResponses": [
                {"id": call.call_id, "name": "get_weather", "response": {"output": "sunny, 21 C"}}
            ]
        }
    ]
    assert all_frames(sim) == list(range(len(sent)))  # every frame once, in order

    await client.disconnect()
    await events.wait_for(lambda: events.of("closed"))
    await sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(5))
    assert sim.connections[0].close_code == 1000
    assert len(sim.connections) == 1


async def test_a_takeover_resumes_with_the_saved_handle(
    sim: GeminiSimulator,
    start_worker: Any,
    gemini_client: Any,
    recorder: Any,
    make_redis: Any,
) -> None:
    # the tool fires on the second user turn: only a session that remembers the first gets there
    sim.script.tool_call = ToolCallScript(arguments={"city": "Oslo"}, on_turn=2)
    owner = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG)
    await speak(client, 0)
    await events.wait_for(lambda: events.of("response-done"))
    first = sim.connections[0]
    await sim.wait_for(lambda s: len(resumable_handles(first)) >= 2, timeout=scaled(5))
    last_handle = resumable_handles(first)[-1]  # issued after the turn
    await until_saved(make_redis(), client.session_id, lambda s: s.get("handle") == last_handle)
    # the handle's state ends at an input entry: the new owner re-reads what came after it
    assert set(await saved_pstate(make_redis(), client.session_id)) == {"handle", "input_after"}

    await crash_with_provider_sockets(owner)
    await sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(5))
    successor = await start_worker(gemini_url=sim.url)
    for data in utterance(100):  # the caller goes on while nobody owns the session
        client.send_audio(data)
    await events.wait_for(lambda: events.of("reconnected"), within=10)

    assert [e.reason for e in events.of("reconnecting")] == ["takeover"]
    assert [e.strategy for e in events.of("reconnected")] == ["resumed"]
    assert client.session_id in successor.runtime.sessions
    second = sim.connections[1]
    assert setup_of(second)["sessionResumption"] == {"handle": last_handle}
    assert (
        second.sent[0]["setupComplete"]["sessionId"] == first.sent[0]["setupComplete"]["sessionId"]
    )
    # the resumed conversation goes on: the second turn is the scripted tool call
    await events.wait_for(lambda: events.of("tool-call"), within=10)
    call = events.of("tool-call")[0]
    assert call.arguments == {"city": "Oslo"}
    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="snow")])
    await events.wait_for(lambda: len(events.of("response-done")) == 2)
    assert second.model.conversation.texts("user") == ["caller speech", "caller speech"]
    assert any("snow" in t.text for t in events.of("transcript") if t.final)
    assert not events.of("closed")
    assert not events.of("error")

    assert_taken_over_without_loss(frames_at(first), frames_at(second), range(100, 145))
    await client.disconnect()


async def test_a_takeover_without_a_handle_replays_the_conversation(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any, make_redis: Any
) -> None:
    # sessionResumption removed from the setup: the server never issues a handle
    config = CONFIG.model_copy(
        update={"provider_options": {"setup": {"sessionResumption": None}}, "tools": []}
    )
    owner = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(config)
    for data in utterance(0):
        client.send_audio(data)
    await events.wait_for(lambda: events.of("response-done"))
    await events.wait_for(
        lambda: any(t.final and t.role == "assistant" for t in events.of("transcript"))
    )
    redis = make_redis()
    await wait_for_checkpoint(redis, client.session_id)
    assert await saved_pstate(redis, client.session_id) == {}

    await crash_with_provider_sockets(owner)
    await start_worker(gemini_url=sim.url)
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    assert [e.strategy for e in events.of("reconnected")] == ["replayed"]
    setup = setup_of(sim.connections[1])
    assert "sessionResumption" not in setup
    instruction = instruction_of(sim.connections[1])
    assert instruction.startswith("You are a helpful agent.\n\n")
    assert "user: caller speech" in instruction
    assert "assistant: Sure, I can help with that." in instruction
    for data in utterance(100):
        client.send_audio(data)
    await events.wait_for(lambda: len(events.of("response-done")) == 2, within=10)
    first, second = sim.connections
    assert_taken_over_without_loss(frames_at(first), frames_at(second), range(100, 145))
    assert not events.of("closed")
    assert not events.of("error")
    await client.disconnect()


async def test_a_go_away_is_handled_inside_the_worker(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any
) -> None:
    worker = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG)
    await speak(client, 0)
    await events.wait_for(lambda: events.of("response-done"))
    await sim.wait_for(lambda s: len(resumable_handles(s.connections[0])) >= 2, timeout=scaled(5))

    sent = 45
    stop = asyncio.Event()

    async def caller() -> None:  # 20 ms frames in real time, right through the switch
        nonlocal sent
        while not stop.is_set():
            client.send_audio(frame(sent))
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)

    playing = asyncio.create_task(caller())
    await sim.wait_for(lambda s: len(frames_at(s.connections[0])) >= 60, timeout=scaled(5))
    await sim.go_away(time_left_s=scaled(1.0))
    await events.wait_for(lambda: events.of("reconnected"), within=5)
    await sim.wait_for(
        lambda s: len(s.connections) == 2 and len(frames_at(s.connections[1])) >= 10,
        timeout=scaled(5),
    )
    stop.set()
    await playing
    await sim.wait_for(lambda s: set(frames_in_state(s)) >= set(range(sent)), timeout=scaled(5))

    assert [e.strategy for e in events.of("reconnected")] == ["resumed"]
    assert len(events.of("reconnecting")) == 1
    assert not events.of("closed")
    assert not events.of("error")
    first, second = sim.connections
    assert setup_of(second)["sessionResumption"]["handle"] == resumable_handles(first)[-1]
    assert first.session.closed_at <= second.session.setup_at  # old socket closed first
    # the resumed session holds every frame, in order; what the old socket took after the
    # handle was sent again, and a frame sent just before the handle arrived may be twice in it
    # (the Developer API says nothing about messages in flight at its snapshot)
    state = frames_in_state(sim)
    assert sorted(set(state)) == list(range(sent))
    assert len(state) - sent <= 15
    resent = frames_at(second)[
        : len(frames_at(second)) - len(range(frames_at(first)[-1] + 1, sent))
    ]
    assert resent and resent == frames_at(first)[len(frames_at(first)) - len(resent) :]
    assert client.session_id in worker.runtime.sessions  # no takeover: the worker switched
    await client.disconnect()


async def test_a_refused_handle_falls_back_to_replaying_the_conversation(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any, make_redis: Any
) -> None:
    owner = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG.model_copy(update={"tools": []}))
    for data in utterance(0):
        client.send_audio(data)
    await events.wait_for(lambda: events.of("response-done"))
    keys = KEYS.session(client.session_id)
    redis = make_redis()
    await wait_for_checkpoint(redis, client.session_id)
    await crash_with_provider_sockets(owner)
    # the handle expired meanwhile (Gemini keeps them 2 h): the server refuses it with 1007
    await redis.hset(keys.state, "pstate", b'{"handle":"sim-handle-expired"}')
    await start_worker(gemini_url=sim.url)
    await events.wait_for(lambda: events.of("reconnected"), within=10)

    # the resume is tried on every attempt but the last, which replays the conversation
    refused, replay = sim.connections[1:-1], sim.connections[-1]
    assert refused and all(c.close_code == 1007 for c in refused)
    assert all(
        setup_of(c)["sessionResumption"] == {"handle": "sim-handle-expired"} for c in refused
    )
    assert [e.strategy for e in events.of("reconnected")] == ["replayed"]  # not "resumed"
    setup = setup_of(replay)
    assert setup["sessionResumption"] == {}  # a new session, which issues handles again
    assert "assistant: Sure, I can help with that." in instruction_of(replay)
    for data in utterance(100):
        client.send_audio(data)
    await events.wait_for(lambda: len(events.of("response-done")) == 2, within=10)
    assert_taken_over_without_loss(
        frames_at(sim.connections[0]), frames_at(replay), range(100, 145)
    )
    assert not events.of("closed")
    await client.disconnect()


async def test_a_stopped_owner_holding_its_socket_open_does_not_end_the_session(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any, make_redis: Any
) -> None:
    stale = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG.model_copy(update={"tools": []}))
    for data in utterance(0):
        client.send_audio(data)
    await events.wait_for(lambda: events.of("response-done"))
    await wait_for_checkpoint(make_redis(), client.session_id)
    runtime = stale.runtime
    runner = runtime.sessions[client.session_id]
    # "SIGSTOP": the stale worker stops renewing and taking jobs, and its Gemini socket stays
    # open, so Gemini refuses to resume the session (1011) while it is
    renewer = next(t for t in runtime._tasks if t.get_name() == "voicegrid-renewer")
    renewer.cancel()
    assert runtime.arq is not None
    runtime.arq.allow_pick_jobs = False
    await start_worker(gemini_url=sim.url)
    await events.wait_for(lambda: events.of("reconnected") or events.of("closed"), within=15)

    assert not events.of("closed")
    assert [e.strategy for e in events.of("reconnected")] == ["replayed"]
    refused = sim.connections[1:-1]
    assert refused and all(c.close_code == 1011 for c in refused)
    assert not sim.connections[0].closed
    assert "user: caller speech" in instruction_of(sim.connections[-1])
    for data in utterance(100):
        client.send_audio(data)
    await events.wait_for(lambda: len(events.of("response-done")) == 2, within=10)

    # "SIGCONT": the stale worker's next write is fenced, and it closes its Gemini socket
    runner._emit("error", ErrorEvent(code="stale", message="late"))
    await sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(5))
    assert sim.connections[0].close_code == 1000
    assert runner.end_reason == "fenced"
    assert not [e for e in events.of("error") if e.code == "stale"]
    await client.disconnect()


async def test_a_tool_call_pending_at_a_takeover_is_cancelled_not_lost(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any, make_redis: Any
) -> None:
    sim.script.tool_call = ToolCallScript(arguments={"city": "Rome"}, on_turn=1)
    owner = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    cancelled: list[Any] = []
    client.on("tool-call-cancelled", cancelled.append)
    await client.connect(CONFIG)
    for data in utterance(0):
        client.send_audio(data)
    await events.wait_for(lambda: events.of("tool-call"))
    call = events.of("tool-call")[0]
    redis = make_redis()
    await wait_for_checkpoint(redis, client.session_id, said=b"get_weather")
    # the exported state names the call the handle predates
    await until_saved(redis, client.session_id, lambda s: s.get("lost_calls") == [call.call_id])
    await crash_with_provider_sockets(owner)  # before the application answered the call
    await start_worker(gemini_url=sim.url)
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    assert [e.strategy for e in events.of("reconnected")] == ["resumed"]
    # the handle predates the call (Gemini issues none while a call is pending): the resumed
    # session does not know it, and the application is told so
    await events.wait_for(lambda: bool(cancelled))
    assert [c.call_ids for c in cancelled] == [[call.call_id]]

    # a late result for it is dropped, not sent to a session that does not know the call
    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="late")])
    # the resumed state predates the question too: the new owner sent it again (the input
    # after the handle's last entry), and the model calls the tool again
    await events.wait_for(lambda: len(events.of("tool-call")) == 2, within=10)
    assert frames_at(sim.connections[1]) == list(range(45))
    again = events.of("tool-call")[1]
    assert again.call_id != call.call_id
    client.send_tool_response([RealtimeToolResponse(call_id=again.call_id, output="sunny")])
    await events.wait_for(lambda: events.of("response-done"), within=10)
    responses = [f["toolResponse"] for f in sim.connections[1].received if "toolResponse" in f]
    assert [r["functionResponses"][0]["id"] for r in responses] == [again.call_id]
    assert not events.of("error")
    assert not events.of("closed")
    await client.disconnect()


async def test_a_reply_cut_by_a_crash_is_closed_as_failed_after_the_takeover(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any, make_redis: Any
) -> None:
    sim.script.speed = 1.0  # a 5 s reply in real time: the crash cuts it
    sim.script.reply_audio_ms = 5000
    owner = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG.model_copy(update={"tools": []}))
    for data in utterance(0):
        client.send_audio(data)
    await events.wait_for(lambda: events.of("audio"))
    cut = events.of("audio")[0].response_id
    assert cut
    redis = make_redis()
    keys = KEYS.session(client.session_id)
    assert await redis.hget(keys.state, "open_resp") == cut.encode()
    await crash_with_provider_sockets(owner)
    assert not events.of("response-done")
    sim.script.reply_audio_ms = 200
    sim.script.speed = 20.0
    await start_worker(gemini_url=sim.url)
    await events.wait_for(lambda: events.of("response-done"), within=10)
    names = [name for name, _ in events.events]
    closing = events.events[names.index("reconnected") + 1]
    assert closing[0] == "response-done"
    assert (closing[1].response_id, closing[1].status) == (cut, "failed")
    # the field no longer marks the cut turn: it is empty, or names a turn the resumed session
    # started since (whose audio reaches the caller right after)
    saved = (await redis.hget(keys.state, "open_resp")).decode()
    assert saved != cut  # response ids are unique per client: the new turn has its own
    if saved:
        start = names.index("reconnected") + 2
        await events.wait_for(
            lambda: any(n == "audio" and p.response_id == saved for n, p in events.events[start:])
        )
    for data in utterance(100):  # the session goes on; the next turn completes normally
        client.send_audio(data)
    await events.wait_for(
        lambda: any(e.status == "completed" for e in events.of("response-done")), within=10
    )
    assert [e.status for e in events.of("response-done")].count("failed") == 1
    assert not events.of("closed")
    await client.disconnect()


async def test_a_call_pending_when_the_handle_is_refused_is_cancelled_after_the_replay(
    sim: GeminiSimulator, start_worker: Any, gemini_client: Any, recorder: Any, make_redis: Any
) -> None:
    sim.script.tool_call = ToolCallScript(arguments={"city": "Rome"}, on_turn=1)
    owner = await start_worker(gemini_url=sim.url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG)
    for data in utterance(0):
        client.send_audio(data)
    await events.wait_for(lambda: events.of("tool-call"))
    call = events.of("tool-call")[0]
    redis = make_redis()
    await wait_for_checkpoint(redis, client.session_id, said=b"get_weather")
    await crash_with_provider_sockets(owner)  # before the application answered the call
    # the handle expired meanwhile: every resume is refused and the last attempt replays
    state = {"handle": "sim-handle-expired", "lost_calls": [call.call_id]}
    await redis.hset(KEYS.session(client.session_id).state, "pstate", orjson.dumps(state))
    await start_worker(gemini_url=sim.url)
    await events.wait_for(lambda: events.of("tool-call-cancelled"), within=10)
    assert [e.strategy for e in events.of("reconnected")] == ["replayed"]
    names = [name for name, _ in events.events]
    assert names[names.index("reconnected") + 1] == "tool-call-cancelled"
    assert [e.call_ids for e in events.of("tool-call-cancelled")] == [[call.call_id]]

    # a late result is dropped: the replayed session never saw the call
    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="late")])
    client.request_response("Say something.")  # applied after the dropped result, in order
    # the replayed session is a new one: its first turn calls the tool again
    await events.wait_for(lambda: len(events.of("tool-call")) == 2, within=10)
    assert events.of("tool-call")[1].call_id != call.call_id
    replay = sim.connections[-1]
    assert not [f for f in replay.received if "toolResponse" in f]
    assert len(events.of("tool-call-cancelled")) == 1
    assert not events.of("closed")
    await client.disconnect()


@pytest.mark.parametrize("mode", ["developer", "vertex"])
async def test_a_takeover_mid_utterance_loses_no_caller_frame(
    sim: GeminiSimulator,
    start_worker: Any,
    gemini_client: Any,
    recorder: Any,
    make_redis: Any,
    mode: str,
) -> None:
    """The owner dies a third into an utterance; the saved handle predates it. The successor
    resumes and re-reads the input after the handle's last entry, so the resumed session holds
    every caller frame: exactly once with transparent resumption (Vertex AI), at least once on
    the Developer API."""
    url = sim.vertex_url if mode == "vertex" else sim.url
    owner = await start_worker(gemini_url=url)
    client = gemini_client()
    events = recorder(client)
    await client.connect(CONFIG.model_copy(update={"tools": []}))
    sent = 0
    stop = asyncio.Event()
    progress = asyncio.Event()

    async def caller() -> None:  # 0.6 s speech, 0.6 s listening, in real time throughout
        nonlocal sent
        while not stop.is_set():
            client.send_audio(frame(sent, speech=sent % 60 < 30))
            sent += 1
            progress.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)

    async def until_sent(count: int) -> None:
        while sent < count:
            progress.clear()
            await progress.wait()

    playing = asyncio.create_task(caller())
    first = sim.connections[0]
    await sim.wait_for(lambda s: len(resumable_handles(first)) >= 2, timeout=5)
    handle = resumable_handles(first)[-1]
    await until_saved(make_redis(), client.session_id, lambda s: s.get("handle") == handle)
    await until_sent(70)  # a third into the second utterance; no handle since the first turn
    assert resumable_handles(first)[-1] == handle
    await crash_with_provider_sockets(owner)
    await start_worker(gemini_url=url)
    await events.wait_for(lambda: events.of("reconnected"), within=10)
    await until_sent(sent + 30)
    stop.set()
    await playing
    await sim.wait_for(lambda s: set(frames_in_state(s)) >= set(range(sent)), timeout=5)

    assert [e.strategy for e in events.of("reconnected")] == ["resumed"]
    second = sim.connections[1]
    assert setup_of(second)["sessionResumption"]["handle"] == handle
    state = frames_in_state(sim)
    duplicated = len(state) - len(set(state))
    lost = set(range(sent)) - set(state)
    print(f"\nin-process takeover ({mode}): {sent} frames, {len(lost)} lost, {duplicated} twice")
    assert not lost
    if mode == "vertex":
        assert state == list(range(sent))  # exactly once, in order
    else:
        assert duplicated <= 15
    # the utterance cut by the crash reached the resumed session: it answered it
    await events.wait_for(lambda: len(events.of("response-done")) >= 2, within=5)
    assert not events.of("closed")
    await client.disconnect()


async def test_what_the_resumption_buffer_drops_is_counted(
    sim: GeminiSimulator, start_worker: Any, make_client: Any
) -> None:
    """A bound the caller's audio outgrows (no handle comes while nobody speaks) drops the
    oldest messages; the worker adds them to voicegrid_resume_buffer_dropped_messages_total."""
    series = ("voicegrid_resume_buffer_dropped_messages_total", {"provider": "gemini"})
    before = REGISTRY.get_sample_value(*series) or 0.0
    # the operator lets callers bound the buffer (not a default caller option)
    allowed = parse_caller_options("resume_buffer_s:number:0..30")
    worker = await start_worker(gemini_url=sim.url, caller_options=allowed)
    client = make_client(provider="gemini", model=MODEL, resume_buffer_s=0.1)
    await client.connect(CONFIG)
    for seq in range(30):  # silence: no turn, so no handle after the setup's
        client.send_audio(frame(seq))
        await asyncio.sleep(0.02)
    await sim.wait_for(lambda s: len(frames_at(s.connections[0])) == 30, timeout=5)
    gemini = worker.runtime.sessions[client.session_id].client
    dropped = gemini.resume_stats.dropped_messages
    assert dropped >= 15  # all but the last 0.1 s
    await client.disconnect()
    assert (REGISTRY.get_sample_value(*series) or 0.0) - before == dropped
