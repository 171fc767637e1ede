"""The runtime benchmark's quick path: both setups run end to end and report sane numbers.

Needs a real Redis (``REDIS_URL``) and spawns ``voicegrid simulate`` and ``voicegrid worker``
subprocesses, hence the integration marker.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from redis.asyncio import Redis

from bench import runtime

SESSIONS = 3
SECONDS = 2.0
FRAMES_PER_S = SESSIONS * 1000 / runtime.FRAME_MS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def _latency(block: dict[str, Any]) -> None:
    assert block["n"] > 0
    assert 0.0 <= block["p50"] <= block["p99"] < 1000.0


async def test_quick_run_reports_both_setups() -> None:
    result = await runtime.run_async(sessions=SESSIONS, seconds=SECONDS, warmup_s=1.0)
    base, dist = result["baseline"], result["distributed"]

    for phase in (base, dist):
        # every caller frame due in the window was sent, and the model answered with audio
        assert phase["frames_in_per_s"] == pytest.approx(FRAMES_PER_S, rel=0.15)
        assert phase["frames_out_per_s"] > 0
        assert phase["errors"] == {}
        _latency(phase["rtt_ms"])
    # the worker relayed the frames, and the callers heard about as much as in-process
    assert dist["worker_frames_in_per_s"] == pytest.approx(FRAMES_PER_S, rel=0.2)
    assert dist["worker_frames_out_per_s"] > 0
    assert dist["frames_out_per_s"] == pytest.approx(base["frames_out_per_s"], rel=0.35)
    _latency(dist["added_in_ms"])
    _latency(dist["added_out_ms"])

    # the client's share is the process's CPU minus a separate run of the callers alone: with
    # three sessions on a busy machine that difference can be noise, so only the whole is > 0
    assert base["process_cpu_per_session_s"] > 0
    assert base["client_cpu_per_session_s"] >= 0
    assert dist["worker_cpu_per_session_s"] > 0
    assert dist["worker_rss_idle_bytes"] > 10_000_000
    assert result["ratios"]["worker_cpu_to_client_cpu"] > 0
    assert set(result["targets"]) >= {"worker_cpu_ratio", "p99_added_in_ms", "rss_per_session_mb"}
    assert all(isinstance(result["targets"][k]["pass"], bool) for k in ("worker_cpu_ratio",))

    # nothing of the run is left in Redis
    redis = Redis.from_url(os.environ["REDIS_URL"])
    try:
        namespace = dist["namespace"]
        left = [k async for k in redis.scan_iter(match=f"{namespace}:*", count=1000)]
        left += [k async for k in redis.scan_iter(match=f"arq:*:{namespace}:*", count=1000)]
    finally:
        await redis.aclose()
    assert left == []
