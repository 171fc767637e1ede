"""Shared kit for the OpenAI client <-> simulator component tests (the ``kit`` fixture).

Time limits scale with one constant, ``VOICEGRID_TEST_TIME_SCALE`` (default 1.0); tests wait on
events and simulator conditions with those limits, never on blind sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from protocol import RealtimeSessionConfig
from protocol.events import EVENT_NAMES
from providers.openai import OpenAIRealtimeClient
from providers.simulator import OpenAISimulator

TIME_SCALE = float(os.environ.get("VOICEGRID_TEST_TIME_SCALE", "1.0"))


def limit(seconds: float) -> float:
    """A time limit scaled by ``VOICEGRID_TEST_TIME_SCALE``."""
    return seconds * TIME_SCALE


class Recorder:
    """Every event a client emits, in order, with waiting helpers."""

    def __init__(self, client: OpenAIRealtimeClient) -> None:
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


def tone(ms: int, rate: int = 24000, amplitude: int = 6000) -> bytes:
    """Speech-loud PCM16 (the simulator's VAD is energy based)."""
    t = np.arange(rate * ms // 1000) / rate
    wave = amplitude * np.sin(2 * np.pi * 220 * t) * (0.8 + 0.2 * np.sin(2 * np.pi * 3 * t))
    return wave.astype("<i2").tobytes()


def silence(ms: int, rate: int = 24000) -> bytes:
    return bytes(2 * (rate * ms // 1000))


def chunks(audio: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(audio), size):
        yield audio[start : start + size]


class Kit:
    """Builders shared by the component tests."""

    limit = staticmethod(limit)
    tone = staticmethod(tone)
    silence = staticmethod(silence)
    chunks = staticmethod(chunks)
    Recorder = Recorder

    @staticmethod
    def client(sim: OpenAISimulator, **options: Any) -> OpenAIRealtimeClient:
        defaults: dict[str, Any] = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2}
        return OpenAIRealtimeClient(model="gpt-realtime", url=sim.url, **{**defaults, **options})

    @staticmethod
    async def session(
        sim: OpenAISimulator, config: RealtimeSessionConfig | None = None, **options: Any
    ) -> tuple[OpenAIRealtimeClient, Recorder]:
        client = Kit.client(sim, **options)
        recorder = Recorder(client)
        await client.connect(config or RealtimeSessionConfig())
        return client, recorder

    @staticmethod
    async def say(
        client: OpenAIRealtimeClient,
        ms: int = 500,
        rate: int = 24000,
        pause_ms: int = 500,
        frame_ms: int = 20,
    ) -> bytes:
        """Send a loud utterance and trailing silence in 20 ms frames; return what was sent."""
        audio = tone(ms, rate) + silence(pause_ms, rate)
        for frame in chunks(audio, 2 * rate * frame_ms // 1000):
            client.send_audio(frame)
            await asyncio.sleep(0)  # let the writer run between frames, like a live feed
        return audio

    @staticmethod
    async def send(client: OpenAIRealtimeClient, audio: bytes, frame_bytes: int = 960) -> None:
        """Send ``audio`` in frames (20 ms of 24 kHz PCM16 by default)."""
        for frame in chunks(audio, frame_bytes):
            client.send_audio(frame)
            await asyncio.sleep(0)

    @staticmethod
    def client_frames(sim: OpenAISimulator, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for conn in sim.connections
            for f in conn.received
            if kind is None or f.get("type") == kind
        ]

    @staticmethod
    def server_frames(sim: OpenAISimulator, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for conn in sim.connections
            for f in conn.sent
            if kind is None or f.get("type") == kind
        ]

    @staticmethod
    def server_errors(sim: OpenAISimulator) -> list[str | None]:
        return [f["error"].get("code") for f in Kit.server_frames(sim, "error")]


@pytest.fixture
def kit() -> Kit:
    return Kit()
