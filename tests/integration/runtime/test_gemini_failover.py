"""Gemini failover with real Redis and real ``voicegrid worker`` processes talking to a
GeminiSimulator run by the test: SIGKILL of the owner mid-call -> the survivor resumes the Gemini
session with the resumption handle saved in Redis; SIGTERM -> hand-off with the handle.

Caller audio is 16 kHz (Gemini's native rate), so every numbered frame reaches the simulator
byte for byte. The measured takeover time is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import signal
import time
from functools import partial
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from protocol import AudioFormat, RealtimeSessionConfig
from protocol.keys import Keys
from providers.simulator import GeminiSimulator, SimScript

from ...support.timing import scaled
from .conftest import (
    GEMINI_FRAME_BYTES,
    Timeline,
    check_every_frame_arrived,
    start_call,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
CONFIG = RealtimeSessionConfig(
    instructions="You are a helpful agent.",
    input_audio=AudioFormat(encoding="pcm16", sample_rate=16000),
    output_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
)
SCRIPT = SimScript(reply_text="Sure, I can help with that.", speed=4.0, tool_call=None)


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
                    return issued[-1]  # issued after a model turn, not the initial one
                await asyncio.sleep(0.01)
    finally:
        await redis.aclose()


async def start_gemini_call(
    sim: GeminiSimulator, workers: Any, make_client: Any, caller: Any, redis_url: str, ns: str
) -> tuple[Any, Any, Timeline, Any, list[Any]]:
    return await start_call(
        sim,
        workers,
        make_client,
        caller,
        redis_url,
        ns,
        CONFIG,
        client_options={"provider": "gemini", "model": MODEL},
        frame_bytes=GEMINI_FRAME_BYTES,
        VOICEGRID_GEMINI_URL=sim.url,
    )


async def test_sigkill_of_the_owner_mid_call_resumes_the_gemini_session(
    workers: Any, make_client: Any, caller: Any, frames: Any, redis_url: str, namespace: str
) -> None:
    async with GeminiSimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, pair = await start_gemini_call(
            sim, workers, make_client, caller, redis_url, namespace
        )
        handle = await latest_handle_saved(sim, redis_url, namespace, client.session_id)

        killed_at = time.monotonic()
        owner.signal(signal.SIGKILL)  # the caller goes on talking
        reconnected_at, event = await timeline.wait("reconnected", after=killed_at, within=15)
        assert event.strategy == "resumed"
        assert event.reason == "takeover"
        resumed_at, _ = await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        sent = call.sent
        seen = partial(frames, frame_bytes=GEMINI_FRAME_BYTES)
        seqs = await check_every_frame_arrived(sim, sent, seen)

        first, second = sim.connections
        assert second.received[0]["setup"]["sessionResumption"] == {"handle": handle}
        session_id = first.sent[0]["setupComplete"]["sessionId"]
        assert second.sent[0]["setupComplete"]["sessionId"] == session_id
        assert first.close_code == 1006  # the kernel closed the dead owner's socket
        before, after = seen(first.audio_in), seen(second.audio_in)
        assert before == list(range(len(before)))  # in order up to the crash, nothing lost
        resent = [seq for seq in after if seq < len(before)]
        assert after == list(range(len(before) - len(resent), sent))  # then in order, once
        assert set(seqs) == set(range(sent))
        assert len(resent) <= 25  # the trailing-cursor window (CURSOR_LAG_S + save interval)
        assert second.model.conversation.texts("user")[:1] == ["caller speech"]
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
            f"\nGemini SIGKILL takeover: reconnected (resumed) {reconnected_at - killed_at:.2f}s "
            f"after the kill, model audio again after {resumed_at - killed_at:.2f}s; {sent} "
            f"caller frames sent, all at the simulator, {len(resent)} re-sent after the crash"
        )
        await client.disconnect()


async def test_sigterm_hands_the_gemini_session_over_with_its_handle(
    workers: Any, make_client: Any, caller: Any, frames: Any, redis_url: str, namespace: str
) -> None:
    async with GeminiSimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, _ = await start_gemini_call(
            sim, workers, make_client, caller, redis_url, namespace
        )
        termed_at = time.monotonic()
        owner.signal(signal.SIGTERM)
        reconnected_at, event = await timeline.wait("reconnected", after=termed_at, within=10)
        assert (event.reason, event.strategy) == ("handoff", "resumed")
        assert await owner.wait_exit() == 0
        await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        seen = partial(frames, frame_bytes=GEMINI_FRAME_BYTES)
        seqs = await check_every_frame_arrived(sim, call.sent, seen)

        first, second = sim.connections
        # the hand-off exported the newest handle after the old socket stopped taking input
        assert second.received[0]["setup"]["sessionResumption"] == {
            "handle": resumable_handles(first)[-1]
        }
        assert first.close_code == 1000
        assert seqs == list(range(call.sent))  # the exact cursor: every frame once, in order
        assert not timeline.first("closed")
        print(
            f"\nGemini SIGTERM hand-off: reconnected (resumed) "
            f"{1000 * (reconnected_at - termed_at):.0f} ms after the signal"
        )
        await client.disconnect()
