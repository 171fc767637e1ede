"""The one retry delay policy: capped exponential backoff with full jitter.

Every loop in voicegrid that retries (Redis pumps, the lease renewer and reaper, the ingress
writer, provider reconnects) waits with :class:`Backoff`. Attempt ``n`` (from 0) sleeps a
uniformly random time in ``[0, min(cap, first * 2**n)]`` ("full jitter"): after a Redis or
provider blip that every process saw at once, their retries spread over the whole window instead
of arriving in lockstep, and the expected wait is half the deterministic one.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for successive retries; :meth:`reset` after a success."""

    __slots__ = ("_random", "attempt", "cap", "first")

    def __init__(self, first: float = 0.05, cap: float = 2.0, *, rng: random.Random | None = None):
        if first < 0 or cap < first:
            raise ValueError(f"Backoff(first={first}, cap={cap}): expected 0 <= first <= cap")
        self.first = first
        self.cap = cap
        self.attempt = 0
        self._random = rng if rng is not None else random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt can draw."""
        return min(self.cap, self.first * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """Draw the delay before the next attempt and count the attempt."""
        delay = self._random.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    async def wait(self) -> None:
        """Sleep for the next delay."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """Start again from ``first`` (after a success)."""
        self.attempt = 0
