"""Shared kit for the OpenAI client <-> simulator component tests (the ``kit`` fixture).

Tests wait on events and simulator conditions with time limits scaled by
``VOICEGRID_TEST_TIME_SCALE`` (``tests/support/timing.py``), never on blind sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from protocol import RealtimeSessionConfig
from providers.openai import OpenAIRealtimeClient
from providers.simulator import OpenAISimulator

from ...support.recorder import Recorder
from ...support.recorder import silence as _silence
from ...support.recorder import tone as _tone


def tone(ms: int, rate: int = 24000, amplitude: int = 6000) -> bytes:
    return _tone(ms, rate, amplitude)


def silence(ms: int, rate: int = 24000) -> bytes:
    return _silence(ms, rate)


def chunks(audio: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(audio), size):
        yield audio[start : start + size]


class Kit:
    """Builders shared by the component tests."""

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
