"""Load-aware admission: the event-loop lag meter and the gate that pauses taking sessions.

``max_jobs`` (``VOICEGRID_MAX_SESSIONS``) caps how many sessions a worker runs, but not how
much load they bring: a heavier session mix, a noisy neighbour on the node or a throttled CPU can
saturate the event loop well below the cap. Every frame of every session waits for the loop, so
its lag is the load signal that matters.

- :class:`LoopLagMeter`: the worker's heartbeat sleeps :data:`HEARTBEAT_S` and reports how long
  the sleep really took; how late it woke is one sample of the loop's scheduling delay. The meter
  keeps an exponentially weighted mean with a time constant of :data:`LAG_TAU_S`, each sample
  weighted by the time it covers, so one garbage-collection pause moves the mean by about a tenth
  of its length (a 100 ms pause: about 10 ms), while a loop that is 100 ms late on every tick
  crosses a 50 ms budget in about 1.5 s.
- :class:`AdmissionGate`: hysteresis on that mean. Admission pauses above the budget
  (``VOICEGRID_MAX_LOOP_LAG_S``) and resumes only below half of it, so a worker hovering at the
  budget does not flap between taking and refusing sessions.

Both are pure (they are fed durations, they read no clock); ``worker.runtime`` drives them from
its heartbeat and stops arq from pulling jobs while the gate is closed.
"""

from __future__ import annotations

import math

__all__ = ["HEARTBEAT_S", "LAG_TAU_S", "AdmissionGate", "LoopLagMeter"]

#: The heartbeat's sleep: one lag sample per tick.
HEARTBEAT_S = 0.1
#: Time constant of the lag's moving average, seconds.
LAG_TAU_S = 2.0


class LoopLagMeter:
    """Exponentially weighted mean of how late a periodic sleep of ``interval_s`` wakes up."""

    def __init__(self, interval_s: float = HEARTBEAT_S, tau_s: float = LAG_TAU_S) -> None:
        self.interval_s = interval_s
        self.tau_s = tau_s
        #: the smoothed lag, seconds
        self.value = 0.0

    def observe(self, elapsed_s: float) -> float:
        """One sleep of ``interval_s`` took ``elapsed_s``; returns the new smoothed lag."""
        late = max(0.0, elapsed_s - self.interval_s)
        weight = 1.0 - math.exp(-max(elapsed_s, 0.0) / self.tau_s)
        self.value += weight * (late - self.value)
        return self.value


class AdmissionGate:
    """Closed (``paused``) above ``budget_s`` of lag, open again below half of it."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.resume_s = budget_s / 2
        self.paused = False

    def update(self, lag_s: float) -> bool:
        """Feed the smoothed lag; True when the gate just opened or closed."""
        if self.paused and lag_s < self.resume_s:
            self.paused = False
            return True
        if not self.paused and lag_s > self.budget_s:
            self.paused = True
            return True
        return False
