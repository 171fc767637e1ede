"""Failover with real Redis and real ``voicegrid worker`` processes talking to the OpenAI
simulator: SIGKILL -> takeover, SIGTERM -> hand-off, SIGSTOP past the lease -> fenced.

The measured takeover time and hand-off gap are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol import AudioFormat, RealtimeSessionConfig
from protocol.keys import Keys
from providers.simulator import OpenAISimulator, SimScript

from ...support.timing import scaled
from .conftest import check_every_frame_arrived, start_call

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CONFIG = RealtimeSessionConfig(
    instructions="You are a helpful agent.",
    input_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
    output_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
)
SCRIPT = SimScript(reply_text="Sure, I can help with that.", speed=4.0)
#: docs/operations.md (A worker crashes): lease TTL + one reaper interval + the provider reconnect,
#: "about 4-5 s at most" from SIGKILL to ``reconnected``.
TAKEOVER_PROMISE_S = 5.0
#: docs/operations.md: ``VOICEGRID_LEASE_TTL_S`` (3 s). A hand-off releases the lease instead of
#: letting it expire (docs/streams.md, Hand-off): the successor must not wait for it.
LEASE_TTL_S = 3.0


async def check_metrics_with_promtool(worker: Any) -> None:
    """``promtool check metrics`` finds no problem in a worker's /metrics (where installed)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    status, body = await worker.http("/metrics")
    assert status == 200 and "voicegrid_frames_total" in body
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(body.encode())
    assert proc.returncode == 0, out.decode()


async def test_sigkill_of_the_owner_mid_call_is_taken_over_without_losing_audio(
    workers: Any, make_client: Any, caller: Any, frames: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, pair = await start_call(
            sim, workers, make_client, caller, redis_url, namespace, CONFIG
        )

        killed_at = time.monotonic()
        owner.signal(signal.SIGKILL)
        reconnected_at, event = await timeline.wait("reconnected", after=killed_at, within=15)
        assert event.strategy == "replayed"  # OpenAI: the conversation is re-sent
        resumed_at, _ = await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        sent = call.sent
        seqs = await check_every_frame_arrived(sim, sent, frames)

        duplicates = len(seqs) - len(set(seqs))
        print(
            f"\nSIGKILL takeover: reconnected {reconnected_at - killed_at:.2f}s after the kill, "
            f"model audio again after {resumed_at - killed_at:.2f}s; {sent} caller frames sent, "
            f"all {len(set(seqs))} at the simulator, {duplicates} re-sent after the crash"
        )
        assert set(seqs) >= set(range(sent))
        assert duplicates <= 25  # the trailing-cursor window (CURSOR_LAG_S + save interval)
        assert reconnected_at - killed_at < scaled(TAKEOVER_PROMISE_S)
        survivor = next(w for w in pair if w is not owner)
        assert await survivor.metric("voicegrid_takeovers_total", reason="lease_expired") == 1
        await client.disconnect()


async def test_sigterm_hands_the_session_over_at_once(
    workers: Any, make_client: Any, caller: Any, frames: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, pair = await start_call(
            sim, workers, make_client, caller, redis_url, namespace, CONFIG
        )

        termed_at = time.monotonic()
        owner.signal(signal.SIGTERM)
        reconnected_at, event = await timeline.wait("reconnected", after=termed_at, within=10)
        assert event.reason == "handoff"
        assert await owner.wait_exit() == 0
        resumed_at, _ = await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        sent = call.sent
        seqs = await check_every_frame_arrived(sim, sent, frames)
        print(
            f"\nSIGTERM hand-off: reconnected {1000 * (reconnected_at - termed_at):.0f} ms after "
            f"the signal, model audio again after {resumed_at - termed_at:.2f}s; "
            f"{sent} frames, {len(seqs) - len(set(seqs))} delivered twice"
        )
        assert set(seqs) >= set(range(sent))
        assert len(seqs) == len(set(seqs))  # the exact cursor: nothing twice on a hand-off
        assert reconnected_at - termed_at < scaled(LEASE_TTL_S)
        assert not timeline.first("closed")
        successor = next(w for w in pair if w is not owner)
        assert await successor.metric("voicegrid_handoffs_total", reason="received") == 1
        assert await successor.metric("voicegrid_takeovers_total", reason="lease_expired") == 0
        await check_metrics_with_promtool(successor)
        await client.disconnect()


async def test_a_stopped_owner_past_its_lease_is_fenced_when_it_resumes(
    workers: Any, make_client: Any, caller: Any, frames: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, stale, timeline, call, _ = await start_call(
            sim, workers, make_client, caller, redis_url, namespace, CONFIG
        )

        stopped_at = time.monotonic()
        stale.signal(signal.SIGSTOP)
        reconnected_at, _ = await timeline.wait("reconnected", after=stopped_at, within=15)
        stale.signal(signal.SIGCONT)
        async with asyncio.timeout(scaled(15)):
            while (  # noqa: ASYNC110 - the stale process reports only through /metrics
                await stale.metric(
                    "voicegrid_sessions_ended_total", provider="openai", reason="fenced"
                )
                != 1
            ):
                await asyncio.sleep(0.1)
        await sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(10))
        await timeline.wait("audio", after=time.monotonic(), within=15)  # the new owner goes on
        await call.stop()
        seqs = await check_every_frame_arrived(sim, call.sent, frames)
        assert set(seqs) >= set(range(call.sent))

        redis = Redis.from_url(redis_url)
        try:
            output = await redis.xrange(Keys(namespace).session(client.session_id).output)
        finally:
            await redis.aclose()
        epochs = [int(fields[b"ep"]) for _, fields in output]
        assert epochs == sorted(epochs)  # nothing from the stale epoch after the new one began
        assert epochs[-1] == 2
        print(
            f"\nSIGSTOP: taken over {reconnected_at - stopped_at:.2f}s after the stop; the "
            "resumed stale owner was fenced and closed its provider connection"
        )
        await client.disconnect()
