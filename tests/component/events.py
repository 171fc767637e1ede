"""Helpers shared by the provider component tests: an event recorder, time limits, test audio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from protocol import RealtimeAudioClient
from protocol.events import EVENT_NAMES

TIME_SCALE = float(os.environ.get("VOICEGRID_TEST_TIME_SCALE", "1.0"))


def limit(seconds: float) -> float:
    """A time limit scaled by ``VOICEGRID_TEST_TIME_SCALE``."""
    return seconds * TIME_SCALE


class Recorder:
    """Every event a client emits, in order, with waiting helpers."""

    def __init__(self, client: RealtimeAudioClient) -> None:
        self.events: list[tuple[str, Any]] = []
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

    async def wait(self, predicate: Callable[[Recorder], object], seconds: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit(seconds)
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"condition not met within {limit(seconds):g} s; events: {self.names()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_count(self, name: str, n: int = 1, seconds: float = 5.0) -> None:
        await self.wait(lambda r: r.count(name) >= n, seconds)


def tone(ms: int, rate: int, amplitude: int = 6000) -> bytes:
    """Speech-loud PCM16 (the simulators' VAD is energy based)."""
    t = np.arange(rate * ms // 1000) / rate
    wave = amplitude * np.sin(2 * np.pi * 220 * t) * (0.8 + 0.2 * np.sin(2 * np.pi * 3 * t))
    return wave.astype("<i2").tobytes()


def silence(ms: int, rate: int) -> bytes:
    return bytes(2 * (rate * ms // 1000))


#: Sample 0 of a numbered caller frame (small: a silent numbered frame stays below any VAD).
MAGIC = 77


def numbered(seq: int, body: bytes) -> bytes:
    """A caller frame that carries its sequence number: ``MAGIC``, ``seq``, then ``body``
    (PCM16 of the frame's length minus 4 bytes)."""
    return struct.pack("<hh", MAGIC, seq) + body


def numbers_in(audio: bytes, frame_bytes: int) -> list[int]:
    """The sequence numbers of the :func:`numbered` frames in ``audio``, in order (what one
    provider connection got, or what a simulated session's state holds)."""
    found = []
    for offset in range(0, len(audio) - frame_bytes + 1, frame_bytes):
        marker, seq = struct.unpack_from("<hh", audio, offset)
        if marker == MAGIC:
            found.append(seq)
    return found
