"""Load-aware admission with two in-process workers: an overloaded worker takes no new session
(nor a takeover), keeps the sessions it owns, says so on /readyz and resumes once its loop is
responsive again.

In-process workers share one event loop, so really blocking one would block both: the slowed
worker's lag meter is replaced by one that reads every heartbeat as ``extra_s`` late (the seam is
``WorkerRuntime.lag``). tests/integration/runtime/test_admission.py slows a real worker process.
The other workers get a generous budget so that a busy test machine does not pause them too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protocol import RealtimeSessionConfig
from worker.admission import LoopLagMeter

CONFIG = RealtimeSessionConfig(instructions="help")
SLOWED_BUDGET_S = 0.1
HEALTHY_BUDGET_S = 2.0


class SlowedLoop(LoopLagMeter):
    """What the meter of a loop that is ``extra_s`` late on every heartbeat reads."""

    def __init__(self, extra_s: float) -> None:
        super().__init__()
        self.extra_s = extra_s

    def observe(self, elapsed_s: float) -> float:
        return super().observe(elapsed_s + self.extra_s)


def frame(n: int) -> bytes:
    return n.to_bytes(2, "little") * 160


async def echoed(events: Any, client: Any, data: bytes) -> None:
    client.send_audio(data)
    await events.wait_for(lambda: any(a.data == data for a in events.of("audio")))


async def test_new_sessions_and_takeovers_go_to_the_worker_that_is_not_overloaded(
    start_worker: Any, make_client: Any, recorder: Any, wait_until: Any
) -> None:
    # a full worker with one session: crashed later, its session must not land on the slow one
    doomed = await start_worker(max_sessions=1, max_loop_lag_s=HEALTHY_BUDGET_S)
    orphan = make_client()
    await orphan.connect(CONFIG)
    slowed = await start_worker(max_loop_lag_s=SLOWED_BUDGET_S)
    own = [make_client() for _ in range(2)]
    for client in own:
        await client.connect(CONFIG)
    own_ids = {c.session_id for c in own}
    assert set(slowed.runtime.sessions) == own_ids

    meter = SlowedLoop(extra_s=0.3)
    slowed.runtime.lag = meter
    await wait_until(lambda: slowed.runtime.overloaded, 5)
    assert slowed.http_status("/readyz") == (503, b"overloaded: event loop lag over budget\n")
    assert slowed.http_status("/healthz")[0] == 200
    assert slowed.runtime.capacity == 2 and slowed.runtime.arq.allow_pick_jobs is False

    healthy = await start_worker(max_loop_lag_s=HEALTHY_BUDGET_S)
    await doomed.crash()
    newcomers = [make_client() for _ in range(3)]
    await asyncio.gather(*(c.connect(CONFIG) for c in newcomers))
    await wait_until(lambda: orphan.session_id in healthy.runtime.sessions, 10)
    assert {c.session_id for c in newcomers} <= set(healthy.runtime.sessions)
    assert set(slowed.runtime.sessions) == own_ids

    # the overloaded worker's own sessions go on
    for n, client in enumerate(own, start=1):
        await echoed(recorder(client), client, frame(n))
    assert slowed.runtime.overloaded

    meter.extra_s = 0.0
    await wait_until(lambda: not slowed.runtime.overloaded, 15)
    assert slowed.runtime.arq.allow_pick_jobs is True
    assert slowed.http_status("/readyz") == (200, b"ready: 2/10 sessions\n")
