"""In-process provider failover (``providers.fallback.FallbackClient``) against both simulators.

Caller audio is sequence-numbered (``tests/support/frames.py``; 20 ms of 24 kHz PCM16, which the
OpenAI client passes through unchanged), so the frames an OpenAI simulator received can be
counted exactly.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest

from protocol import (
    ConfigRejectedError,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ToolDefinition,
)
from providers import create_client
from providers.fallback import FailoverPolicy, FallbackClient, LocalHealth
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript
from providers.simulator.gemini import GeminiSimulator

from ...support.frames import frame_numbers, numbered_frame
from ...support.recorder import Recorder
from ...support.timing import scaled

GEMINI = "gemini-2.5-flash-native-audio-preview-12-2025"
FRAME = 960  # 20 ms of 24 kHz PCM16
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "reconnect_attempts": 1}
WEATHER = ToolDefinition(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def frame(seq: int, loud: bool) -> bytes:
    return numbered_frame(seq, FRAME, speech=loud)


def seqs(audio: bytes) -> list[int]:
    return frame_numbers(audio, FRAME)


class Caller:
    """Sends numbered frames: an utterance is ``speech_frames`` loud then ``quiet`` silent."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seq = 0

    async def send(self, n: int, *, loud: bool) -> range:
        first = self.seq
        for _ in range(n):
            self.client.send_audio(frame(self.seq, loud))
            self.seq += 1
            await asyncio.sleep(0)
        return range(first, self.seq)

    async def utterance(self, speech: int = 25, quiet: int = 30) -> range:
        said = await self.send(speech, loud=True)
        await self.send(quiet, loud=False)
        return said


def fallback_client(
    primary: Any, fallback: Any, *, health: LocalHealth | None = None, **policy: Any
) -> FallbackClient:
    p_name = "openai" if isinstance(primary, OpenAISimulator) else "gemini"
    f_name = "openai" if isinstance(fallback, OpenAISimulator) else "gemini"
    client = create_client(
        p_name,
        model="gpt-realtime" if p_name == "openai" else GEMINI,
        url=primary.url,
        fallbacks=[
            {
                "provider": f_name,
                "model": "gpt-realtime-mini" if f_name == "openai" else GEMINI,
                "options": {"backoff_initial_s": 0.01},
            }
        ],
        fallback_credentials={f_name: {"url": fallback.url, "api_key": "sk-fallback"}},
        failover_policy=FailoverPolicy(**policy),
        provider_health=health or LocalHealth(),
        api_key="sk-primary",
        **FAST,
    )
    assert isinstance(client, FallbackClient)
    return client


async def kill(sim: Any) -> None:
    """The provider is down: new upgrades refused with 503, live sockets cut."""
    sim.refuse(503)
    await sim.drop(None)


async def test_killed_openai_primary_moves_to_gemini_with_the_conversation() -> None:
    script = SimScript(reply_text="Hello from the primary.", speed=0, tool_call=None)
    async with (
        OpenAISimulator(script) as primary,
        GeminiSimulator(
            SimScript(reply_text="Hi from the fallback.", speed=0, tool_call=None)
        ) as fallback,
    ):
        client = fallback_client(primary, fallback)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig(instructions="Be brief.", voice="alloy"))
        assert (client.provider, client.capabilities.session_resumption) == ("openai", False)
        caller = Caller(client)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 1)
        await kill(primary)
        await rec.wait_for(lambda: rec.count("reconnected") == 1)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 2)
        await client.disconnect()

    (reconnected,) = rec.of("reconnected")
    assert reconnected.strategy == "failover"
    assert (reconnected.provider, reconnected.model) == ("gemini", GEMINI)
    assert reconnected.capabilities["session_resumption"] is True
    assert client.provider == "gemini" and client.capabilities.session_resumption
    assert rec.count("closed") == 1 and rec.names()[-1] == "closed"
    assert not [e for e in rec.of("error") if not e.recoverable]
    setup = next(f for f in fallback.connections[0].received if "setup" in f)["setup"]
    instructions = str(setup.get("systemInstruction"))
    assert "Be brief." in instructions and "Hello from the primary." in instructions
    assert "alloy" not in str(setup)  # an OpenAI voice is not sent to Gemini
    texts = [t.text for t in rec.of("transcript") if t.final and t.role == "assistant"]
    assert texts == ["Hello from the primary.", "Hi from the fallback."]
    assert client.failovers[0][:3] == ("openai/gpt-realtime", f"gemini/{GEMINI}", "unreachable")


async def test_the_callers_unanswered_utterance_reaches_the_new_provider_once() -> None:
    """Gemini primary, OpenAI fallback: the frames counted at the fallback are exactly those
    from the answered turn's end on; none of the answered turn is sent again."""
    quiet = SimScript(reply_text="First answer.", speed=0, tool_call=None)
    async with (
        GeminiSimulator(quiet) as primary,
        OpenAISimulator(
            SimScript(reply_text="Second answer.", speed=0, tool_call=None)
        ) as fallback,
    ):
        client = fallback_client(primary, fallback)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig())
        caller = Caller(client)
        first = await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 1)
        answered_end = caller.seq
        question = await caller.send(15, loud=True)  # the caller starts asking
        await kill(primary)
        during = await caller.send(10, loud=True)  # and goes on while the switch runs
        await rec.wait_for(lambda: rec.count("reconnected") == 1)
        rest = await caller.send(30, loud=False)
        await rec.wait_for(lambda: rec.count("response-done") == 2)
        await fallback.wait_for(lambda s: len(s.audio_in) >= FRAME * len(rest), scaled(5))
        await client.disconnect()

    got = seqs(fallback.audio_in)
    assert got == sorted(got) and len(got) == len(set(got)), "in order, none twice"
    assert not set(got) & set(first), "nothing of the answered turn is sent again"
    assert set(question) | set(during) | set(rest) <= set(got), "the question arrives whole"
    # before the question only trailing silence of the answered turn (sent after the
    # provider's speech-stopped was emitted, before it arrived) may come again
    assert first.stop <= min(got) <= answered_end
    print(
        f"audio accounting: {len(got)} frames at the fallback, {answered_end - min(got)} "
        f"silent frames of the answered turn's tail, {len(question) + len(during)} re-sent"
    )
    assert fallback.connections[0].model.turns == 1
    assert client.replayed_audio_bytes >= FRAME * (len(question) + len(during))


async def test_refused_before_connect_starts_on_the_fallback() -> None:
    async with (
        OpenAISimulator(SimScript(tool_call=None)) as primary,
        OpenAISimulator(SimScript(tool_call=None)) as fallback,
    ):
        primary.refuse(429, "Rate limit reached.")
        client = fallback_client(primary, fallback)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig())
        assert rec.of("connected")[0].provider == "openai"
        assert len(fallback.connections) == 1 and primary.rejected[0].http_status == 429
        assert client.failovers[0][2] == "rate_limit"
        await client.disconnect()


async def test_a_config_the_provider_rejects_never_switches() -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as primary, OpenAISimulator() as fb:
        primary.refuse(400, "Invalid value for 'voice'.")  # the caller's mistake everywhere
        client = fallback_client(primary, fb)
        with pytest.raises(ConfigRejectedError):
            await client.connect(RealtimeSessionConfig())
        assert fb.connections == [] and client.failovers == []


async def test_server_errors_and_rate_limits_mid_call_switch_after_the_threshold() -> None:
    async with (
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as primary,
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as fallback,
    ):
        client = fallback_client(primary, fallback, error_threshold=3)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig())
        await primary.send_error("server_error", "The server had an error.")
        await rec.wait_for(lambda: rec.count("error") == 1)
        assert rec.count("reconnecting") == 0  # one is transient
        await primary.send_error("rate_limit_exceeded", "Rate limit reached.")
        await primary.send_error("server_error", "The server had an error.")
        await rec.wait_for(lambda: rec.count("reconnected") == 1)
        (reconnecting,) = rec.of("reconnecting")
        assert reconnecting.strategy == "failover" and reconnecting.reason == "server_error"
        assert len(fallback.connections) == 1 and primary.live_connections == []
        await client.disconnect()


async def test_a_pending_tool_call_is_cancelled_and_reissued_by_the_new_model() -> None:
    tool = ToolCallScript(arguments={"city": "Oslo"})
    async with (
        OpenAISimulator(SimScript(speed=0, tool_call=tool)) as primary,
        OpenAISimulator(SimScript(speed=0, tool_call=tool, reply_text="It is sunny.")) as fallback,
    ):
        client = fallback_client(primary, fallback)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig(tools=[WEATHER]))
        await Caller(client).utterance()
        await rec.wait_for(lambda: rec.count("tool-call") == 1)
        old_call = rec.of("tool-call")[0].call_id
        await kill(primary)
        await rec.wait_for(lambda: rec.count("tool-call") == 2)
        (cancelled,) = rec.of("tool-call-cancelled")
        assert cancelled.call_ids == [old_call]
        new_call = rec.of("tool-call")[1].call_id
        assert new_call != old_call
        # the late result of the old call is dropped, never sent to the new provider session
        client.send_tool_response([RealtimeToolResponse(call_id=old_call, output="rain")])
        client.send_tool_response([RealtimeToolResponse(call_id=new_call, output="sun")])
        await rec.wait_for(lambda: rec.count("response-done") >= 3)
        await client.disconnect()
    outputs = [
        f["item"]["call_id"]
        for f in fallback.connections[0].received
        if f["type"] == "conversation.item.create" and f["item"]["type"] == "function_call_output"
    ]
    assert outputs == [new_call]


async def no_switch(rec: Recorder, switches: int) -> None:
    """Give a (wrong) move back time to start, then check there was none."""
    await asyncio.sleep(0.1)
    assert rec.count("reconnecting") == switches


async def test_moves_back_to_the_primary_between_turns_once_closed_never_mid_turn() -> None:
    """Back to the primary only at a safe point, after ``fail_back_after_s`` (small here), with
    the primary's breaker closed; a turn waiting on a tool result is never cut."""
    primary_label = "openai/gpt-realtime"
    tool = ToolCallScript(arguments={"city": "Oslo"}, on_turn=3)  # the fallback's third turn
    health = LocalHealth(threshold=1)  # the primary's failure opens its breaker
    async with (
        OpenAISimulator(SimScript(reply_text="Primary.", speed=0, tool_call=None)) as primary,
        OpenAISimulator(SimScript(reply_text="Fallback.", speed=0, tool_call=tool)) as fallback,
    ):
        client = fallback_client(primary, fallback, health=health, fail_back_after_s=1.0)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig(tools=[WEATHER]))
        caller = Caller(client)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 1)
        await kill(primary)
        await rec.wait_for(lambda: rec.count("reconnected") == 1)
        loop = asyncio.get_running_loop()
        switched = loop.time()
        primary.refuse(None)  # the primary is back
        assert await health.state(primary_label) == "open"

        # breaker closed, but too soon after the switch: stays
        await health.record_success(primary_label)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 2)
        assert loop.time() - switched < 1.0
        await no_switch(rec, 1)

        # long enough, but the breaker is open again: stays
        await health.record_failure(primary_label)
        await asyncio.sleep(max(0.0, switched + 1.05 - loop.time()))
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 3)
        await no_switch(rec, 1)

        # closed, long enough, but the model's turn waits on a tool result: stays
        await health.record_success(primary_label)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("tool-call") == 1)
        await rec.wait_for(lambda: rec.count("response-done") == 4)
        await no_switch(rec, 1)
        assert client.provider == "openai" and client.target.model == "gpt-realtime-mini"

        # the result is answered in full on the fallback, then the session moves back
        call_id = rec.of("tool-call")[0].call_id
        client.send_tool_response([RealtimeToolResponse(call_id=call_id, output="sunny")])
        await rec.wait_for(lambda: rec.count("reconnected") == 2)
        back = rec.of("reconnected")[1]
        assert (back.strategy, back.reason) == ("failover", "recovered")
        assert (back.provider, back.model) == ("openai", "gpt-realtime")
        assert client.target.label == primary_label
        assert rec.of("reconnecting")[1].reason == "recovered"
        names = rec.names()
        back_at = len(names) - 1 - names[::-1].index("reconnected")
        assert names[back_at - 2 :] == ["response-done", "reconnecting", "reconnected"]
        (done,) = [e for n, e in rec.events if n == "response-done"][4:]
        assert done.status == "completed"
        answers = [t.text for t in rec.of("transcript") if t.final and t.role == "assistant"]
        assert answers[-1].startswith("Fallback.") or "sunny" in answers[-1]
        assert not rec.of("tool-call-cancelled")  # the answered call was never cut

        # and the next turn is the primary's
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 6)
        await client.disconnect()
    answers = [t.text for t in rec.of("transcript") if t.final and t.role == "assistant"]
    assert answers[-1] == "Primary."
    assert len(primary.connections) == 2 and len(fallback.connections) == 1
    assert [f[2] for f in client.failovers] == ["unreachable", "recovered"]


async def test_a_session_started_on_the_fallback_waits_before_moving_back() -> None:
    """A session whose connect skipped the primary has switched too: the minimum time on the
    fallback counts from that connect (the primary's breaker is closed after one refusal)."""
    async with (
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as primary,
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as fallback,
    ):
        primary.refuse(503)
        client = fallback_client(primary, fallback, fail_back_after_s=60.0)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig())
        assert client.target.model == "gpt-realtime-mini"
        primary.refuse(None)
        await Caller(client).utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 1)
        await no_switch(rec, 0)
        assert client.target.model == "gpt-realtime-mini" and len(primary.connections) == 0
        await client.disconnect()


@pytest.mark.parametrize("why", ["handle_refused", "provider_down"])
async def test_a_gemini_go_away_it_cannot_resume_moves_to_the_fallback(why: str) -> None:
    """goAway, then the resume fails: the server forgets the handles (the resume is refused
    with 1007, ``reconnect_attempts`` is spent) or refuses every upgrade (503). The session
    moves to the fallback with the conversation instead of ending."""
    async with (
        GeminiSimulator(SimScript(reply_text="From Gemini.", speed=0, tool_call=None)) as primary,
        OpenAISimulator(SimScript(reply_text="From OpenAI.", speed=0, tool_call=None)) as fb,
    ):
        client = fallback_client(primary, fb)
        rec = Recorder(client)
        await client.connect(RealtimeSessionConfig(instructions="Be brief."))
        caller = Caller(client)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 1)
        if why == "handle_refused":
            primary._handles.clear()  # every handle the client holds is unknown now
        else:
            primary.refuse(503)
        await primary.go_away(0.5)
        await rec.wait_for(lambda: rec.count("reconnected") == 1)
        await caller.utterance()
        await rec.wait_for(lambda: rec.count("response-done") == 2)
        await client.disconnect()

    (reconnected,) = rec.of("reconnected")
    assert (reconnected.strategy, reconnected.reason) == ("failover", "unreachable")
    assert (reconnected.provider, reconnected.model) == ("openai", "gpt-realtime-mini")
    assert not [e for e in rec.of("error") if not e.recoverable]
    assert rec.count("closed") == 1 and rec.names()[-1] == "closed"
    session = fb.connections[0].received[0]["session"]
    assert "Be brief." in session["instructions"] and "From Gemini." in session["instructions"]
    answers = [t.text for t in rec.of("transcript") if t.final and t.role == "assistant"]
    assert answers == ["From Gemini.", "From OpenAI."]
    if why == "handle_refused":
        assert len(primary.connections) == 2  # one resume tried, and refused
    else:
        assert primary.rejected and primary.rejected[0].http_status == 503


async def test_the_failover_gap_over_twenty_runs() -> None:
    """failure (the socket cut) -> ``reconnected`` on the fallback; p50/p99 printed."""
    gaps: list[float] = []
    async with (
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as primary,
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as fallback,
    ):
        for _ in range(20):
            primary.refuse(None)
            client = fallback_client(primary, fallback)
            rec = Recorder(client)
            await client.connect(RealtimeSessionConfig())
            loop = asyncio.get_running_loop()
            cut = loop.time()
            await kill(primary)
            await rec.wait_for(lambda rec=rec: rec.count("reconnected") == 1)  # type: ignore[misc]
            gaps.append(loop.time() - cut)
            await client.disconnect()
    gaps.sort()
    p50, p99 = statistics.median(gaps), gaps[-1]
    print(f"failover gap over {len(gaps)} runs: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert p99 < scaled(2.0)
