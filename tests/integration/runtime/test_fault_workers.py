"""Fault suite, workers: SIGKILL, SIGTERM, SIGSTOP past the lease, a stalled event loop that must
not be taken over, and SIGTERM while Redis is unreachable. Real Redis, real ``voicegrid worker``
processes, the OpenAI simulator, and callers sending sequence-numbered audio in real time that
is counted at the provider: lost, duplicated, reordered (see ``faultkit``).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import pytest

from providers.simulator import OpenAISimulator
from worker.settings import LEASE_TTL_S

from ...support.net import free_port
from ...support.timing import scaled
from .conftest import owner_of
from .faultkit import (  # noqa: F401 - fault_ledger is an autouse fixture
    SCRIPT,
    Talker,
    fault_ledger,
    finish,
    record,
    summary,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Sessions per fault run: each one's takeover is one sample.
SESSIONS = 6


async def _owned_by_one(
    sim: Any, workers: Any, redis_url: str, namespace: str, count: int
) -> tuple[Any, Any, list[Talker]]:
    """``count`` talking sessions all owned by worker a (started alone), then worker b; returns
    once the model answered each of them."""
    owner = workers("a", sim.url)
    await owner.wait_ready()
    talkers = [await Talker.connected(redis_url, namespace, i) for i in range(count)]
    other = workers("b", sim.url)
    await other.wait_ready()
    await asyncio.gather(*(t.at("audio", within=20) for t in talkers))
    return owner, other, talkers


async def test_sigkill_of_the_owner_is_taken_over_fast_without_losing_audio(
    workers: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        owner, survivor, talkers = await _owned_by_one(sim, workers, redis_url, namespace, SESSIONS)
        await asyncio.sleep(random.uniform(0.0, 1.0))  # any phase of the lease renewals
        killed = time.monotonic()
        owner.signal(signal.SIGKILL)
        took = [await t.at("reconnected", after=killed, within=15) - killed for t in talkers]
        await asyncio.gather(*(t.at("audio", after=killed + max(took)) for t in talkers))
        totals = await finish(sim, talkers)
        takeover = summary(took)
        record("sigkill", sessions=SESSIONS, takeover_s=takeover, **totals)
        assert totals["lost"] == 0 and totals["reordered"] == 0, totals
        assert totals["duplicated"] <= 25 * SESSIONS  # the trailing cursor's re-sends
        assert takeover["max"] < scaled(4.0), took  # measured 1.6-2.4 s; CI has slack
        assert await survivor.metric("voicegrid_takeovers_total", reason="lease_expired") == (
            SESSIONS
        )


async def test_sigterm_hands_every_session_over_with_nothing_lost_or_repeated(
    workers: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        owner, _, talkers = await _owned_by_one(sim, workers, redis_url, namespace, 4)
        signalled = time.monotonic()
        owner.signal(signal.SIGTERM)
        took = [await t.at("reconnected", after=signalled, within=15) - signalled for t in talkers]
        assert await owner.wait_exit(within=25) == 0
        await asyncio.sleep(1.0)
        totals = await finish(sim, talkers)
        record("sigterm", sessions=len(talkers), handoff_s=summary(took), **totals)
        assert totals["lost"] == 0 and totals["duplicated"] == 0, totals
        assert totals["reordered"] == 0, totals


async def test_sigstop_past_the_lease_is_taken_over_and_the_old_owner_fenced(
    workers: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        owner, other, talkers = await _owned_by_one(sim, workers, redis_url, namespace, 2)
        stopped = time.monotonic()
        owner.signal(signal.SIGSTOP)
        took = [await t.at("reconnected", after=stopped, within=15) - stopped for t in talkers]
        owner.signal(signal.SIGCONT)
        fenced = 0.0
        async with asyncio.timeout(10):
            while fenced < len(talkers):
                fenced = await owner.metric(
                    "voicegrid_sessions_ended_total", provider="openai", reason="fenced"
                )
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        totals = await finish(sim, talkers)
        record("sigstop_past_lease", sessions=len(talkers), takeover_s=summary(took), **totals)
        assert totals["lost"] == 0 and totals["reordered"] == 0, totals
        for talker in talkers:
            assert await owner_of(redis_url, namespace, talker.client.session_id or "") == (
                other.worker_id
            )


async def test_an_event_loop_stalled_for_a_second_is_not_taken_over(
    workers: Any, redis_url: str, namespace: str
) -> None:
    """The other side of a fast takeover: a worker that stops for 1 s (GC, a noisy neighbour;
    SIGSTOP stands in for a blocked loop) keeps its sessions, again and again."""
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        owner, other, talkers = await _owned_by_one(sim, workers, redis_url, namespace, 2)
        stalls = 6
        for _ in range(stalls):
            await asyncio.sleep(random.uniform(0.3, 1.0))  # a different renewal phase each time
            owner.signal(signal.SIGSTOP)
            await asyncio.sleep(1.0)
            owner.signal(signal.SIGCONT)
        await asyncio.sleep(LEASE_TTL_S + 1.0)  # a takeover would have happened by now
        totals = await finish(sim, talkers)
        takeovers = await other.metric("voicegrid_takeovers_total", reason="lease_expired")
        record("stall_1s", stalls=stalls, takeovers=int(takeovers), **totals)
        assert takeovers == 0
        assert all(not t.of("reconnecting") for t in talkers)
        assert totals["lost"] == 0 and totals["duplicated"] == 0, totals


async def test_sigterm_is_honoured_while_redis_is_unreachable(workers: Any) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    worker = workers(
        "unreachable", "ws://127.0.0.1:9/", REDIS_URL=dead, VOICEGRID_DRAIN_TIMEOUT_S="2"
    )
    await asyncio.sleep(1.5)  # retrying Redis
    assert worker.proc.poll() is None
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = await worker.wait_exit(within=10)
    took = time.monotonic() - signalled
    record("sigterm_redis_unreachable", exit_code=code, exit_s=round(took, 2))
    assert code == 0 and took < 3.0, worker.log_path.read_text()[-2000:]
