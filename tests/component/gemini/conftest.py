"""Shared kit for the Gemini client <-> GeminiSimulator component tests.

Tests wait on events and simulator conditions with time limits scaled by
``VOICEGRID_TEST_TIME_SCALE`` (``tests/support/timing.py``), never on blind sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from protocol import AudioFormat, RealtimeSessionConfig, ToolDefinition
from providers.gemini import GeminiLiveClient
from providers.simulator import SimScript
from providers.simulator.gemini import GeminiSimulator

from ...support.recorder import Recorder
from ...support.recorder import silence as _silence
from ...support.recorder import tone as _tone
from ...support.timing import scaled

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def tone(ms: int, rate: int = 16000, amplitude: int = 6000) -> bytes:
    return _tone(ms, rate, amplitude)


def silence(ms: int, rate: int = 16000) -> bytes:
    return _silence(ms, rate)


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
        await asyncio.wait_for(client.connect(config or native_config()), scaled(5))
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
