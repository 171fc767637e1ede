"""Shared kit for the Gemini client <-> GeminiSimulator component tests.

Time limits scale with one constant, ``VOICEGRID_TEST_TIME_SCALE`` (default 1.0); tests wait on
events and simulator conditions with those limits, never on blind sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from protocol import AudioFormat, RealtimeSessionConfig, ToolDefinition
from protocol.events import EVENT_NAMES
from providers.gemini import GeminiLiveClient
from providers.simulator import SimScript
from providers.simulator.gemini import GeminiSimulator

TIME_SCALE = float(os.environ.get("VOICEGRID_TEST_TIME_SCALE", "1.0"))
MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def limit(seconds: float) -> float:
    """A time limit scaled by ``VOICEGRID_TEST_TIME_SCALE``."""
    return seconds * TIME_SCALE


class Recorder:
    """Every event a client emits, in order, with waiting helpers."""

    def __init__(self, client: GeminiLiveClient) -> None:
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


def tone(ms: int, rate: int = 16000, amplitude: int = 6000) -> bytes:
    """Speech-loud PCM16 (the simulator's VAD is energy based)."""
    t = np.arange(rate * ms // 1000) / rate
    wave = amplitude * np.sin(2 * np.pi * 220 * t) * (0.8 + 0.2 * np.sin(2 * np.pi * 3 * t))
    return wave.astype("<i2").tobytes()


def silence(ms: int, rate: int = 16000) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


def utterance(rate: int = 16000, speech_ms: int = 400, frame_ms: int = 20) -> list[bytes]:
    """20 ms frames: speech, then enough silence for the simulator's VAD to end the turn."""
    speech = tone(speech_ms, rate)
    quiet = silence(500, rate)
    audio = speech + quiet
    step = rate * frame_ms // 1000 * 2
    return [audio[i : i + step] for i in range(0, len(audio), step)]


def sent_frames(sim: GeminiSimulator, key: str, index: int | None = None) -> list[dict[str, Any]]:
    """Server frames with top-level ``key`` (on one connection, or all)."""
    conns = sim.connections if index is None else [sim.connections[index]]
    return [frame for conn in conns for frame in conn.sent if key in frame]


def received(sim: GeminiSimulator, key: str, index: int | None = None) -> list[dict[str, Any]]:
    """Client frames with top-level ``key`` (on one connection, or all)."""
    conns = sim.connections if index is None else [sim.connections[index]]
    return [frame for conn in conns for frame in conn.received if key in frame]


def server_content(sim: GeminiSimulator, field_name: str, index: int | None = None) -> int:
    """How many ``serverContent`` frames carried ``field_name``."""
    return sum(
        1 for f in sent_frames(sim, "serverContent", index) if field_name in f["serverContent"]
    )


@dataclass
class Kit:
    """A started simulator plus helpers to make connected clients against it."""

    sim: GeminiSimulator
    clients: list[GeminiLiveClient] = field(default_factory=list)

    def client(self, **options: Any) -> GeminiLiveClient:
        options.setdefault("backoff_initial_s", 0.05)
        options.setdefault("backoff_max_s", 0.2)
        client = GeminiLiveClient(model=options.pop("model", MODEL), url=self.sim.url, **options)
        self.clients.append(client)
        return client

    async def connected(
        self, config: RealtimeSessionConfig | None = None, **options: Any
    ) -> tuple[GeminiLiveClient, Recorder]:
        client = self.client(**options)
        recorder = Recorder(client)
        await asyncio.wait_for(client.connect(config or native_config()), limit(5))
        return client, recorder


def native_config(**fields: Any) -> RealtimeSessionConfig:
    """16 kHz in (Gemini's native rate), 24 kHz out, unless the test overrides them."""
    fields.setdefault("input_audio", AudioFormat(sample_rate=16000))
    fields.setdefault("output_audio", AudioFormat(sample_rate=24000))
    return RealtimeSessionConfig(**fields)


def fast_script(**fields: Any) -> SimScript:
    fields.setdefault("speed", 25.0)
    fields.setdefault("tool_call", None)
    return SimScript(**fields)


@pytest.fixture
def script() -> SimScript:
    return fast_script()


@pytest.fixture
async def kit(script: SimScript) -> AsyncIterator[Kit]:
    async with GeminiSimulator(script, validate=True) as sim:
        kit = Kit(sim)
        try:
            yield kit
        finally:
            for client in kit.clients:
                await client.disconnect()
            assert sim.validation_errors == []
            assert sim.internal_errors == []
