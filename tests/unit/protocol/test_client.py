"""The client base: emitter semantics, lifecycle table, send buffer, capabilities."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from protocol import (
    AudioEvent,
    AudioSendBuffer,
    ConfigError,
    ErrorEvent,
    RealtimeAudioClient,
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    SessionState,
    SpeechEvent,
    UnsupportedCapability,
    UsageError,
)
from protocol.client import EventEmitter, StateMachine

from ...support.timing import scaled


class _NoResponseClient(RealtimeAudioClient):
    capabilities = RealtimeCapabilities(request_response=False)
    provider = "test"

    async def connect(self, config: RealtimeSessionConfig) -> None:
        self._lifecycle.to(SessionState.CONNECTING)
        self._lifecycle.to(SessionState.LIVE)

    async def disconnect(self) -> None:
        self._lifecycle.to(SessionState.CLOSED)

    async def ping(self) -> bool:
        return self.connected

    def send_audio(self, frame: bytes) -> None:
        pass

    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        pass

    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        pass


def speech(ms: int) -> SpeechEvent:
    return SpeechEvent(audio_ms=ms)


class TestEmitter:
    async def test_sync_handlers_run_inline_in_order(self) -> None:
        em = EventEmitter()
        seen: list[int | None] = []
        em.on("speech-started", lambda e: seen.append(e.audio_ms))
        em.emit("speech-started", speech(1))
        em.emit("speech-started", speech(2))
        assert seen == [1, 2]

    async def test_async_handlers_run_in_emission_order(self) -> None:
        em = EventEmitter()
        seen: list[int | None] = []

        async def slow(e: SpeechEvent) -> None:
            await asyncio.sleep(0.01 if e.audio_ms == 1 else 0)
            seen.append(e.audio_ms)

        em.on("speech-started", slow)
        for i in range(1, 4):
            em.emit("speech-started", speech(i))
        assert seen == []  # nothing awaited on the emitting task
        await asyncio.wait_for(em.wait_handlers(), scaled(2))
        assert seen == [1, 2, 3]

    async def test_raising_handler_is_logged_and_isolated(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        em = EventEmitter()
        seen: list[str] = []

        def bad(_e: Any) -> None:
            raise RuntimeError("boom")

        async def bad_async(_e: Any) -> None:
            raise RuntimeError("async boom")

        em.on("error", bad)
        em.on("error", bad_async)
        em.on("error", lambda e: seen.append(e.code))
        with caplog.at_level(logging.ERROR):
            em.emit("error", ErrorEvent(code="x", message="m"))
            await asyncio.wait_for(em.wait_handlers(), scaled(2))
        assert seen == ["x"]
        assert "boom" in caplog.text and "async boom" in caplog.text

    async def test_off_removes_and_double_on_is_a_noop(self) -> None:
        em = EventEmitter()
        seen: list[int] = []

        def h(_e: Any) -> None:
            seen.append(1)

        em.on("speech-stopped", h)
        em.on("speech-stopped", h)
        em.emit("speech-stopped", speech(0))
        em.off("speech-stopped", h)
        em.off("speech-stopped", h)
        em.emit("speech-stopped", speech(0))
        assert seen == [1]

    def test_unknown_event_name_lists_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="unknown event 'spech-started'"):
            EventEmitter().on("spech-started", print)  # type: ignore[arg-type]

    def test_emit_checks_the_payload_model(self) -> None:
        with pytest.raises(UsageError, match="needs a AudioEvent payload"):
            EventEmitter().emit("audio", speech(1))

    def test_audio_event_payload(self) -> None:
        em = EventEmitter()
        got: list[AudioEvent] = []
        em.on("audio", got.append)
        em.emit("audio", AudioEvent(data=b"\x00\x00", sample_rate=24000, response_id="r1"))
        assert got[0].data == b"\x00\x00"


class TestStateMachine:
    def test_legal_path(self) -> None:
        sm = StateMachine()
        for s in (SessionState.CONNECTING, SessionState.LIVE, SessionState.RECONNECTING):
            sm.to(s)
        assert sm.open
        sm.to(SessionState.LIVE)
        sm.to(SessionState.CLOSING)
        sm.to(SessionState.CLOSED)
        assert not sm.open

    def test_illegal_transition_names_both_states(self) -> None:
        sm = StateMachine()
        with pytest.raises(UsageError, match="idle -> live"):
            sm.to(SessionState.LIVE)

    def test_closed_is_terminal(self) -> None:
        sm = StateMachine()
        sm.to(SessionState.CLOSED)
        with pytest.raises(UsageError):
            sm.to(SessionState.CONNECTING)


class TestAudioSendBuffer:
    def test_drop_oldest_when_full_and_count(self) -> None:
        buf = AudioSendBuffer(max_bytes=10)
        assert buf.push(b"aaaa") == 0
        assert buf.push(b"bbbb") == 0
        assert buf.push(b"cccc") == 1
        assert buf.dropped_frames == 1 and buf.dropped_bytes == 4
        assert buf.pop() == b"bbbb"
        assert buf.pop() == b"cccc"
        assert buf.pop() is None

    def test_unpop_keeps_order(self) -> None:
        buf = AudioSendBuffer(max_bytes=100)
        buf.push(b"1")
        buf.push(b"2")
        first = buf.pop()
        assert first == b"1"
        buf.unpop(first)
        assert [buf.pop(), buf.pop()] == [b"1", b"2"]
        assert buf.size == 0

    def test_bad_size(self) -> None:
        with pytest.raises(ConfigError, match="positive"):
            AudioSendBuffer(0)


class TestClientBase:
    async def test_request_response_without_capability_raises(self) -> None:
        client = _NoResponseClient(model="m")
        with pytest.raises(UnsupportedCapability, match=r"capabilities\.request_response"):
            client.request_response("hi")

    async def test_connected_follows_lifecycle(self) -> None:
        client = _NoResponseClient(model="m")
        assert not client.connected
        await client.connect(RealtimeSessionConfig())
        assert client.connected and client.state is SessionState.LIVE
        await client.disconnect()
        assert not client.connected

    def test_model_must_be_given(self) -> None:
        with pytest.raises(ConfigError, match="model"):
            _NoResponseClient(model="")
