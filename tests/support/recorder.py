"""What a client emitted, and test audio: :class:`Recorder`, :func:`tone`, :func:`silence`.

One recorder for every suite that drives a ``RealtimeAudioClient`` (a provider client against a
simulator, a ``RedisRealtimeClient`` against in-process workers): every event, in order, and
waits on a condition over them that are bounded by scaled time limits, never blind sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from protocol import RealtimeAudioClient
from protocol.events import EVENT_NAMES

from .timing import scaled

__all__ = ["Recorder", "silence", "tone"]


class Recorder:
    """Every event ``client`` emits, in order, as ``(name, payload)`` in :attr:`events`.

    ``within`` is the default limit of the waits, in seconds before scaling.
    """

    def __init__(self, client: RealtimeAudioClient, *, within: float = 5.0) -> None:
        self.events: list[tuple[str, Any]] = []
        self.within = within
        self._changed = asyncio.Event()
        for name in sorted(EVENT_NAMES):
            client.on(name, self._handler(name))  # type: ignore[arg-type]

    def _handler(self, name: str) -> Callable[[Any], None]:
        def handle(payload: Any) -> None:
            self.events.append((name, payload))
            self._changed.set()

        return handle

    def of(self, name: str) -> list[Any]:
        return [payload for n, payload in self.events if n == name]

    def names(self, *, audio: bool = False) -> list[str]:
        return [n for n, _ in self.events if audio or n != "audio"]

    def count(self, name: str) -> int:
        return len(self.of(name))

    async def wait_for(self, predicate: Callable[[], object], within: float | None = None) -> None:
        """Return once ``predicate()`` holds; fail after ``within`` seconds (scaled)."""
        limit = scaled(self.within if within is None else within)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"condition not met within {limit:g} s; events: {self.names()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait(
        self, predicate: Callable[[Recorder], object], seconds: float | None = None
    ) -> None:
        """:meth:`wait_for` with a predicate that takes the recorder."""
        await self.wait_for(lambda: predicate(self), seconds)

    async def wait_count(self, name: str, n: int = 1, seconds: float | None = None) -> None:
        """Until ``name`` was emitted at least ``n`` times."""
        await self.wait_for(lambda: self.count(name) >= n, seconds)


def tone(ms: int, rate: int, amplitude: int = 6000) -> bytes:
    """Speech-loud PCM16 (the simulators' VAD is energy based)."""
    t = np.arange(rate * ms // 1000) / rate
    wave = amplitude * np.sin(2 * np.pi * 220 * t) * (0.8 + 0.2 * np.sin(2 * np.pi * 3 * t))
    return wave.astype("<i2").tobytes()


def silence(ms: int, rate: int) -> bytes:
    return bytes(2 * (rate * ms // 1000))
