"""Unit tests of load-aware admission: the lag meter, the gate's hysteresis, the budget setting,
the runtime's reaction (arq stops pulling, capacity, /readyz) and the metrics.

The meter and the gate are fed durations, never a clock: every sample below is synthetic, so
nothing here depends on how fast the machine is.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from protocol.errors import ConfigError
from redisio.http import HealthServer
from redisio.metrics import REGISTRY
from worker.admission import HEARTBEAT_S, AdmissionGate, LoopLagMeter
from worker.runtime import WorkerRuntime
from worker.settings import MAX_LOOP_LAG_S, WorkerSettings

BUDGET = MAX_LOOP_LAG_S


def ticks(meter: LoopLagMeter, late_s: float, n: int) -> float:
    """``n`` heartbeats, each ``late_s`` late; the smoothed lag after the last."""
    for _ in range(n):
        meter.observe(HEARTBEAT_S + late_s)
    return meter.value


def test_an_on_time_loop_has_no_lag_and_early_wakeups_count_as_on_time() -> None:
    meter = LoopLagMeter()
    assert ticks(meter, 0.0, 50) == 0.0
    assert meter.observe(HEARTBEAT_S - 0.002) == 0.0


def test_a_steadily_late_loop_converges_to_its_lateness() -> None:
    meter = LoopLagMeter()
    assert ticks(meter, 0.03, 200) == pytest.approx(0.03, rel=1e-3)


def test_one_gc_pause_moves_the_mean_by_about_a_tenth_of_its_length() -> None:
    meter = LoopLagMeter()
    ticks(meter, 0.001, 100)
    after = meter.observe(HEARTBEAT_S + 0.1)  # one 100 ms pause
    assert 0.008 < after < 0.012
    gate = AdmissionGate(BUDGET)
    assert not gate.update(after) and not gate.paused


def test_a_loop_late_on_every_tick_crosses_the_budget_within_two_seconds() -> None:
    meter = LoopLagMeter()
    gate = AdmissionGate(BUDGET)
    waited = 0.0
    while not gate.update(meter.observe(HEARTBEAT_S + 0.1)):
        waited += HEARTBEAT_S + 0.1
        assert waited < 2.0
    assert gate.paused and waited > 0.5  # not on the first late tick


def test_a_long_stall_weighs_by_its_length() -> None:
    short, long = LoopLagMeter(), LoopLagMeter()
    assert short.observe(HEARTBEAT_S + 0.2) < long.observe(HEARTBEAT_S + 2.0) / 5
    assert long.value > BUDGET  # a 2 s stall pauses admission at once


def test_the_gate_pauses_above_the_budget_and_resumes_below_half_of_it() -> None:
    gate = AdmissionGate(0.05)
    assert gate.resume_s == 0.025
    assert not gate.update(0.05) and not gate.paused  # at the budget: still admitting
    assert gate.update(0.051) and gate.paused
    for lag in (0.06, 0.04, 0.03, 0.025, 0.049, 0.026):  # between the thresholds: no flapping
        assert not gate.update(lag) and gate.paused
    assert gate.update(0.024) and not gate.paused
    assert not gate.update(0.049) and not gate.paused


def test_a_lag_hovering_at_the_budget_changes_the_gate_once() -> None:
    meter, gate = LoopLagMeter(), AdmissionGate(BUDGET)
    changes = 0
    for n in range(600):  # one minute of ticks alternating 35 and 75 ms late
        changes += gate.update(meter.observe(HEARTBEAT_S + (0.075 if n % 2 else 0.035)))
    assert changes == 1 and gate.paused


def test_budget_setting_is_read_and_validated() -> None:
    assert WorkerSettings.from_env({}).max_loop_lag_s == MAX_LOOP_LAG_S == 0.05
    assert WorkerSettings.from_env({"VOICEGRID_MAX_LOOP_LAG_S": "0.2"}).max_loop_lag_s == 0.2
    for bad in ("fast", "0", "-1", "nan", "61"):
        with pytest.raises(ConfigError, match="VOICEGRID_MAX_LOOP_LAG_S"):
            WorkerSettings.from_env({"VOICEGRID_MAX_LOOP_LAG_S": bad})


def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


def test_the_runtime_stops_pulling_jobs_while_overloaded_and_reports_it() -> None:
    settings = WorkerSettings(redis_url="redis://x", max_sessions=10, max_loop_lag_s=0.05)
    runtime = WorkerRuntime(settings)  # opens no connection: nothing here talks to Redis
    runtime.arq = SimpleNamespace(allow_pick_jobs=True)  # type: ignore[assignment]
    runtime.sessions = {"s1": None, "s2": None}  # type: ignore[dict-item]
    server = HealthServer(runtime, port=0)
    pauses = _sample("voicegrid_admission_pauses_total")
    assert runtime.capacity == 10 and not runtime.overloaded

    for _ in range(30):
        runtime.loop_lagged(HEARTBEAT_S + 0.2)
    assert runtime.overloaded and runtime.arq.allow_pick_jobs is False
    assert runtime.capacity == 2  # what it already runs: no free slot
    assert _sample("voicegrid_sessions_capacity") == 2
    assert _sample("voicegrid_admission_paused") == 1
    assert _sample("voicegrid_admission_pauses_total") == pauses + 1
    assert _sample("voicegrid_event_loop_lag_seconds") > 0.05
    assert server.route("/readyz")[0] == 503
    assert server.route("/readyz")[2].startswith(b"overloaded")
    assert server.route("/healthz")[0] == 200  # slow is not dead: no restart

    for _ in range(200):
        runtime.loop_lagged(HEARTBEAT_S)
    assert not runtime.overloaded and runtime.arq.allow_pick_jobs is True
    assert runtime.capacity == 10 and _sample("voicegrid_sessions_capacity") == 10
    assert _sample("voicegrid_admission_paused") == 0
    assert _sample("voicegrid_admission_pauses_total") == pauses + 1
    assert server.route("/readyz") == (200, "text/plain", b"ready: 2/10 sessions\n")


def test_a_draining_worker_stays_closed_when_its_lag_recovers() -> None:
    settings = WorkerSettings(redis_url="redis://x", max_loop_lag_s=0.05)
    runtime = WorkerRuntime(settings)  # opens no connection: nothing here talks to Redis
    runtime.arq = SimpleNamespace(allow_pick_jobs=True)  # type: ignore[assignment]
    for _ in range(30):
        runtime.loop_lagged(HEARTBEAT_S + 0.2)
    runtime.draining = True
    for _ in range(200):
        runtime.loop_lagged(HEARTBEAT_S)
    assert not runtime.overloaded
    assert runtime.arq.allow_pick_jobs is False and runtime.capacity == 0
