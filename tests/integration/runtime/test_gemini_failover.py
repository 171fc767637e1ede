"""Gemini failover with real Redis and real ``voicegrid worker`` processes talking to a
GeminiSimulator run by the test: SIGKILL of the owner mid-utterance -> the survivor resumes the
Gemini session with the handle saved in Redis; SIGTERM -> hand-off with the handle. In both the
resumed session must hold every caller frame, including the ones the old owner's connection
got after the handle (the start of the caller's current utterance), so the survivor re-reads
the input stream after the handle's last entry (``pstate.input_after``).

Two modes: the Gemini Developer API (no consumed index: at least once, a frame sent within
``resume_margin_s`` of the handle may be there twice) and Vertex AI with transparent resumption
(exactly once). Caller audio is 16 kHz (Gemini's native rate), so every numbered frame reaches
the simulator byte for byte and the simulator's consumed state (``sim.consumed_audio()``) shows
lost and duplicated frames. The measured numbers are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from protocol import AudioFormat, RealtimeSessionConfig
from protocol.keys import Keys
from providers.simulator import GeminiSimulator, SimScript

from ...support.timing import scaled
from .conftest import GEMINI_FRAME_BYTES, Timeline, frames_seen, start_call

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
CONFIG = RealtimeSessionConfig(
    instructions="You are a helpful agent.",
    input_audio=AudioFormat(encoding="pcm16", sample_rate=16000),
    output_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
)
SCRIPT = SimScript(reply_text="Sure, I can help with that.", speed=4.0, tool_call=None)
MODES = ["developer", "vertex"]
#: The conftest caller speaks 50 frames (1 s), then listens 30, and so on.
CYCLE, SPEECH = 80, 50


def resumable_handles(conn: Any) -> list[str]:
    """The resumable handles the simulator issued on one connection, in order."""
    return [
        f["sessionResumptionUpdate"]["newHandle"]
        for f in conn.sent
        if f.get("sessionResumptionUpdate", {}).get("resumable")
    ]


async def latest_handle_saved(sim: GeminiSimulator, redis_url: str, ns: str, sid: str) -> str:
    """Wait until the owner saved the newest handle the simulator issued; return it."""
    redis = Redis.from_url(redis_url)
    state_key = Keys(ns).session(sid).state
    try:
        async with asyncio.timeout(scaled(10)):
            while True:
                issued = resumable_handles(sim.connections[0])
                saved = orjson.loads(await redis.hget(state_key, "pstate") or b"{}")
                if len(issued) >= 2 and saved.get("handle") == issued[-1]:
                    assert "input_after" in saved  # where the handle's state ends
                    return issued[-1]  # issued after a model turn, not the initial one
                await asyncio.sleep(0.01)
    finally:
        await redis.aclose()


async def into_next_utterance(call: Any, frames: int) -> None:
    """Wait until the caller is ``frames`` into an utterance that began after now."""
    target = (call.sent // CYCLE + 1) * CYCLE + frames
    while call.sent < target:  # noqa: ASYNC110 - the conftest caller has no event to wait on
        await asyncio.sleep(0.005)


async def mid_utterance_call(
    sim: GeminiSimulator,
    workers: Any,
    make_client: Any,
    caller: Any,
    redis_url: str,
    ns: str,
    mode: str,
) -> tuple[Any, Any, Timeline, Any, list[Any], str]:
    """A call whose caller is half a second into an utterance begun after the latest handle,
    which the owner saved: ``(client, owner, timeline, call, pair, handle)``."""
    client, owner, timeline, call, pair = await start_call(
        sim,
        workers,
        make_client,
        caller,
        redis_url,
        ns,
        CONFIG,
        client_options={"provider": "gemini", "model": MODEL},
        frame_bytes=GEMINI_FRAME_BYTES,
        VOICEGRID_GEMINI_URL=sim.vertex_url if mode == "vertex" else sim.url,
    )
    await latest_handle_saved(sim, redis_url, ns, client.session_id)
    await into_next_utterance(call, SPEECH // 2)
    handle = await latest_handle_saved(sim, redis_url, ns, client.session_id)
    return client, owner, timeline, call, pair, handle


async def check_resumed_state(sim: GeminiSimulator, sent: int, mode: str) -> tuple[int, int, int]:
    """Once the resumed session holds frame ``sent - 1``, check that it holds every frame:
    exactly once on Vertex AI; at least once on the Developer API, a frame there twice only
    from a short run sent again (one step back). Returns how many frames the old connection got
    that the new one got again, how many are lost and how many are there twice."""
    await sim.wait_for(
        lambda s: sent - 1 in frames_seen(s.consumed_audio(), GEMINI_FRAME_BYTES),
        timeout=scaled(10),
    )
    state = frames_seen(sim.consumed_audio(), GEMINI_FRAME_BYTES)
    first, second = sim.connections
    before = frames_seen(first.audio_in, GEMINI_FRAME_BYTES)
    assert before == list(range(len(before)))  # in order up to the switch
    resent = len(before) - frames_seen(second.audio_in, GEMINI_FRAME_BYTES)[0]
    counts = Counter(state)
    lost = sum(1 for seq in range(sent) if seq not in counts)
    duplicated = sum(n - 1 for n in counts.values())
    assert lost == 0, f"{lost} caller frames missing from the resumed session"
    assert sorted(counts) == list(range(sent))
    if mode == "vertex":
        assert state == list(range(sent))
    else:
        steps_back = [i for i in range(1, len(state)) if state[i] <= state[i - 1]]
        assert len(steps_back) <= 1 and duplicated <= 15
    return resent, lost, duplicated


@pytest.mark.parametrize("mode", MODES)
async def test_sigkill_of_the_owner_mid_utterance_resumes_with_every_frame(
    workers: Any,
    make_client: Any,
    caller: Any,
    redis_url: str,
    namespace: str,
    mode: str,
) -> None:
    async with GeminiSimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, pair, handle = await mid_utterance_call(
            sim, workers, make_client, caller, redis_url, namespace, mode
        )
        killed_at = time.monotonic()
        owner.signal(signal.SIGKILL)  # the caller goes on talking
        reconnected_at, event = await timeline.wait("reconnected", after=killed_at, within=15)
        assert (event.reason, event.strategy) == ("takeover", "resumed")
        resumed_at, _ = await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        # resent: frames the dead owner's connection got that the survivor sent again (without
        # the re-read, those after the handle's snapshot were lost)
        resent, lost, duplicated = await check_resumed_state(sim, call.sent, mode)

        first, second = sim.connections
        assert second.received[0]["setup"]["sessionResumption"].get("handle") == handle
        session_id = first.sent[0]["setupComplete"]["sessionId"]
        assert second.sent[0]["setupComplete"]["sessionId"] == session_id
        assert first.close_code == 1006  # the kernel closed the dead owner's socket
        assert not timeline.first("closed")
        survivor = next(w for w in pair if w is not owner)
        assert await survivor.metric("voicegrid_takeovers_total", reason="lease_expired") == 1
        assert (
            await survivor.metric(
                "voicegrid_resumptions_total", provider="gemini", strategy="resumed"
            )
            == 1
        )
        print(
            f"\nGemini SIGKILL takeover ({mode}): reconnected (resumed) "
            f"{reconnected_at - killed_at:.2f}s after the kill, model audio again after "
            f"{resumed_at - killed_at:.2f}s; {call.sent} caller frames, {resent} of the dead "
            f"owner's sent again; {lost} lost, {duplicated} twice in the resumed session"
        )
        await client.disconnect()


@pytest.mark.parametrize("mode", MODES)
async def test_sigterm_mid_utterance_hands_the_gemini_session_over_with_every_frame(
    workers: Any,
    make_client: Any,
    caller: Any,
    redis_url: str,
    namespace: str,
    mode: str,
) -> None:
    async with GeminiSimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, _, _ = await mid_utterance_call(
            sim, workers, make_client, caller, redis_url, namespace, mode
        )
        termed_at = time.monotonic()
        owner.signal(signal.SIGTERM)
        reconnected_at, event = await timeline.wait("reconnected", after=termed_at, within=10)
        assert (event.reason, event.strategy) == ("handoff", "resumed")
        assert await owner.wait_exit() == 0
        await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        resent, lost, duplicated = await check_resumed_state(sim, call.sent, mode)

        first, second = sim.connections
        # the hand-off exported the newest handle after the old socket stopped taking input
        resumed_with = second.received[0]["setup"]["sessionResumption"]
        assert resumed_with.get("handle") == resumable_handles(first)[-1]
        assert first.close_code == 1000
        assert not timeline.first("closed")
        print(
            f"\nGemini SIGTERM hand-off ({mode}): reconnected (resumed) "
            f"{1000 * (reconnected_at - termed_at):.0f} ms after the signal; {call.sent} "
            f"caller frames, {resent} of the old connection's sent again; {lost} lost, "
            f"{duplicated} twice in the resumed session"
        )
        await client.disconnect()
