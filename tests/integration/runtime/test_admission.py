"""Load-aware admission with real Redis and real ``voicegrid worker`` processes: a worker whose
event loop is really slowed takes no new session (they wait in the queue, then go to a worker
started later), keeps its own call going, and admits again once it runs freely.

The slowing is external, like CFS throttling or a starved node: the test stops the process
(SIGSTOP) for 300 ms of every 400 ms, so each heartbeat wakes up to 300 ms late. No test hook in
the worker is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import pytest

from providers.simulator import OpenAISimulator

from ...support.timing import scaled
from .conftest import Timeline, WorkerProcess, owner_of
from .test_failover import CONFIG, SCRIPT  # the same OpenAI call as the failover tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STOPPED_S, RUNNING_S = 0.3, 0.1
#: How long the queued sessions are left with only the slowed worker: without admission control
#: it would pick them up in its running windows (it polls every 50 ms while it runs).
UNTAKEN_S = 2.0


async def throttle(worker: WorkerProcess) -> None:
    """Stop ``worker`` for STOPPED_S of every STOPPED_S + RUNNING_S, until cancelled."""
    try:
        while True:
            worker.signal(signal.SIGSTOP)
            await asyncio.sleep(STOPPED_S)
            worker.signal(signal.SIGCONT)
            await asyncio.sleep(RUNNING_S)
    finally:
        worker.signal(signal.SIGCONT)


async def until(check: Any, within: float) -> None:
    async with asyncio.timeout(scaled(within)):
        while not await check():  # noqa: ASYNC110 - another process: polled over HTTP
            await asyncio.sleep(0.05)


async def test_new_sessions_go_to_the_worker_whose_loop_is_not_slowed(
    workers: Any, make_client: Any, caller: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        slowed = workers("slowed", sim.url)
        await slowed.wait_ready()
        client = make_client()
        timeline = Timeline(client)
        await client.connect(CONFIG)
        assert await owner_of(redis_url, namespace, client.session_id) == slowed.worker_id
        call = caller(client)
        call.start()
        await timeline.wait("audio", within=15)

        async def paused() -> bool:
            return await slowed.metric("voicegrid_admission_paused") == 1

        async def ready() -> bool:
            return (await slowed.http("/readyz"))[0] == 200

        slowing = asyncio.create_task(throttle(slowed))
        newcomers = [make_client() for _ in range(3)]
        connecting: asyncio.Future[list[None]] | None = None
        try:
            await until(paused, 10)
            assert await slowed.http("/readyz") == (503, "overloaded: event loop lag over budget\n")
            assert await slowed.metric("voicegrid_event_loop_lag_seconds") > 0.05

            connecting = asyncio.gather(*(c.connect(CONFIG) for c in newcomers))
            await asyncio.sleep(UNTAKEN_S)
            assert not connecting.done()
            assert not [c for c in newcomers if await owner_of(redis_url, namespace, c.session_id)]
            healthy = workers("healthy", sim.url)
            await healthy.wait_ready()
            await connecting
            assert await healthy.metric("voicegrid_admission_paused") == 0
            owners = [await owner_of(redis_url, namespace, c.session_id) for c in newcomers]
            assert owners == [healthy.worker_id] * 3

            # the slowed worker's own call goes on: the model still answers the caller
            await timeline.wait("audio", after=time.monotonic() + 1.0, within=20)
            assert await owner_of(redis_url, namespace, client.session_id) == slowed.worker_id
            assert await slowed.metric("voicegrid_admission_paused") == 1
        finally:
            if connecting is not None:
                connecting.cancel()
            slowing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slowing

        await until(ready, 20)
        assert await slowed.metric("voicegrid_admission_pauses_total") >= 1
        assert not timeline.first("reconnecting") and not timeline.first("closed")
        await call.stop()
        for c in [client, *newcomers]:
            await c.disconnect()
