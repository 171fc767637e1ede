"""The OpenAI Realtime GA client: :class:`OpenAITranslator` plus the shared WebSocket transport.

All protocol decisions live in the translator; this module wires them to the socket machinery
of :mod:`providers.transport` and implements the ``RealtimeAudioClient`` methods.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from typing import Any, Literal

import orjson

from protocol.audio import AudioConverter, check_frame
from protocol.client import SessionState
from protocol.config import (
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    parse_config,
    parse_update,
)
from protocol.errors import (
    ConfigError,
    ConfigRejectedError,
    NotConnectedError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
)
from protocol.events import ConfigUpdatedEvent, ErrorEvent
from providers.translator import Signal
from providers.transport import (
    Endpoint,
    Frame,
    TransportOptions,
    WebSocketRealtimeClient,
    check_api_key,
    check_instruction,
    check_ws_url,
    merge_options,
    parse_tool_responses,
    require_positive_ints,
)

from .translator import (
    DEFAULT_TRANSCRIPTION_MODEL,
    FATAL_ERROR_CODES,
    Fatal,
    HandshakeDone,
    HandshakeFailed,
    OpenAITranslator,
    Reconnect,
    UpdateDone,
    UpdateFailed,
    wire_format,
)

__all__ = ["DEFAULT_URL", "OpenAIRealtimeClient"]

log = logging.getLogger("voicegrid.openai")

#: The GA realtime endpoint; the client appends ``?model=<model>``.
DEFAULT_URL = "wss://api.openai.com/v1/realtime"

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_LOOPBACK_KEY = "sk-voicegrid-loopback"
_AUTH_HEADERS = ("authorization", "api-key")
_CLOSE_FATAL = frozenset({1002, 1003, 1007, 1008, 1009, 1010})

_OPTION_DEFAULTS: dict[str, Any] = {
    "auth_header": "authorization",
    "max_buffer_ms": 10_000,
    "reconnect_attempts": 5,
    "backoff_initial_s": 0.25,
    "backoff_max_s": 8.0,
    "recycle_after_s": 55 * 60.0,
    "ping_interval_s": 20.0,
    "ping_timeout_s": 20.0,
    "open_timeout_s": 10.0,
    "handshake_timeout_s": 10.0,
    "update_timeout_s": 10.0,
    "transcription_model": DEFAULT_TRANSCRIPTION_MODEL,
    "replay_max_chars": 40_000,
}


class OpenAIRealtimeClient(WebSocketRealtimeClient):
    """OpenAI Realtime (GA) over one raw WebSocket, with reconnect and conversation replay.

    ``OpenAIRealtimeClient(*, model, api_key=None, url=None, **options)``

    - ``api_key``: defaults to ``OPENAI_API_KEY``. A missing key raises ``ConfigError`` from
      ``connect`` unless ``url`` points at a loopback host (the simulator accepts any key). The
      key only travels in a header; it never appears in logs, events or errors.
    - ``url``: the realtime endpoint without query, default :data:`DEFAULT_URL`; the client
      appends ``?model=<model>``. Azure OpenAI (GA):
      ``url="wss://<resource>.openai.azure.com/openai/v1/realtime"`` with ``model`` set to the
      deployment name and ``auth_header="api-key"``.

    Options (all keyword; an unknown option raises ``ConfigError``):

    - ``auth_header`` (``"authorization"``): ``"authorization"`` sends
      ``Authorization: Bearer <key>``; ``"api-key"`` sends ``api-key: <key>`` (Azure).
    - ``max_buffer_ms`` (10000): outgoing audio buffer in milliseconds of wire audio; when full
      the oldest audio is dropped, counted in ``audio_stats`` and reported once per overflow
      episode as a recoverable ``error`` event ``audio_buffer_overflow``.
    - ``reconnect_attempts`` (5): tries per connection loss before the session ends.
    - ``backoff_initial_s`` (0.25), ``backoff_max_s`` (8.0): exponential backoff with jitter
      between reconnect attempts.
    - ``recycle_after_s`` (3300, i.e. 55 minutes; ``None`` disables): replace the connection
      between turns after this long, before the service's 60-minute cap (Azure: 30 minutes, so
      use e.g. 1680 there). The new connection gets the config and the conversation replayed.
    - ``ping_interval_s`` (20.0), ``ping_timeout_s`` (20.0): WebSocket keepalive pings
      (``None`` disables); ``ping()`` waits ``ping_timeout_s`` for the pong.
    - ``open_timeout_s`` (10), ``handshake_timeout_s`` (10), ``update_timeout_s`` (10): time
      limits for the socket upgrade, for ``session.updated`` after connecting, and for
      ``update_config``.
    - ``transcription_model`` (``"gpt-4o-mini-transcribe"``): the input transcription model
      sent when ``input_transcription`` is on; ``language`` goes into that transcription object.
    - ``replay_max_chars`` (40000): cap on the replayed conversation (oldest items go first).

    Config mapping notes: ``temperature`` is not a GA session field and is not sent;
    ``output_transcription=False`` suppresses assistant transcript events on the client (the
    service always streams them); ``provider_options`` are deep-merged into the GA session
    object (:func:`providers.translator.deep_merge`, as for Gemini: dicts merge, ``None``
    deletes a key, anything else replaces it; e.g.
    ``{"audio": {"input": {"noise_reduction": {"type": "near_field"}}}}``); ``type`` stays
    ``"realtime"``.
    Audio: PCM16 input/output at any supported rate is converted to/from 24 kHz; G.711
    (``mulaw``/``alaw``) at 8 kHz passes through as ``audio/pcmu``/``audio/pcma``.

    Reconnect: after a retryable loss (1000/1001/1006/1011 closes, network errors) the client
    emits ``reconnecting``, opens a new connection with backoff, re-sends the whole config and
    the conversation so far (user and assistant text, function calls and outputs) and emits
    ``reconnected`` with strategy ``replayed``. Input audio and tool results given meanwhile are
    buffered and delivered once. Invalid key, quota, deactivated account, billing or HTTP
    401/403 end the session (``error`` recoverable=False, then ``closed``) without retrying.
    """

    provider = "openai"
    capabilities = RealtimeCapabilities(
        request_response=True,
        config_update="in-place",
        session_resumption=False,
        tool_call_cancellation=True,
        message_truncation=True,
        semantic_vad=True,
        voice_change_after_audio=False,
        native_input_sample_rate=24000,
        native_output_sample_rate=24000,
        input_encodings=("pcm16", "mulaw", "alaw"),
        max_connection_seconds=3600,
    )

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        url: str | None = None,
        **options: Any,
    ) -> None:
        opts = merge_options("OpenAIRealtimeClient", _OPTION_DEFAULTS, options)
        if opts["auth_header"] not in _AUTH_HEADERS:
            raise ConfigError(
                f"auth_header {opts['auth_header']!r} is invalid; expected 'authorization' "
                "(Bearer token) or 'api-key' (Azure)"
            )
        require_positive_ints(opts, "max_buffer_ms", "replay_max_chars")
        if not isinstance(opts["transcription_model"], str) or not opts["transcription_model"]:
            raise ConfigError(
                f"transcription_model {opts['transcription_model']!r} is invalid; expected a "
                "model name such as 'gpt-4o-mini-transcribe'"
            )
        check_api_key(api_key, "OPENAI_API_KEY")
        transport = TransportOptions.from_options(
            opts, max_buffer_bytes=_buffer_bytes(opts["max_buffer_ms"], 48)
        )
        super().__init__(model=model, transport=transport)
        self._api_key = api_key
        self._base_url = url or DEFAULT_URL
        check_ws_url(self._base_url, f"realtime endpoint such as {DEFAULT_URL!r}")
        self._auth_header: str = opts["auth_header"]
        self._max_buffer_ms: int = opts["max_buffer_ms"]
        self._update_timeout_s = float(opts["update_timeout_s"])
        self._transcription_model: str = opts["transcription_model"]
        self._replay_max_chars: int = opts["replay_max_chars"]
        self._translator: OpenAITranslator | None = None
        self._in_conv: AudioConverter | None = None
        self._update_waiters: dict[str, asyncio.Future[None]] = {}
        self._imported: list[dict[str, Any]] = []
        self._update_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OpenAIRealtimeClient(model={self.model!r}, url={self._base_url!r})"

    @property
    def config(self) -> RealtimeSessionConfig | None:
        """The session config in effect (None before ``connect``)."""
        return self._translator.config if self._translator is not None else None

    # ------------------------------------------------------------------ RealtimeAudioClient

    async def connect(self, config: RealtimeSessionConfig | dict[str, Any]) -> None:
        """Open the session; resolves once the server answered ``session.updated``.

        Raises ``ConfigError`` (missing key, bad config), ``ProviderAuthError`` (key, quota),
        ``ConfigRejectedError`` (the server rejected the config, with its code and message) or
        ``ProviderConnectionError`` (network); nothing is retried here.
        """
        parsed = parse_config(config)
        self._resolve_key()
        self._translator = OpenAITranslator(
            parsed,
            transcription_model=self._transcription_model,
            replay_max_chars=self._replay_max_chars,
        )
        if self._imported:
            self._translator.import_items(self._imported)
        self._setup_input(parsed)
        await self._open_session()

    def send_audio(self, frame: bytes) -> None:
        """Queue one frame in the session's input format; returns at once.

        Raises ``AudioFormatError`` (non-bytes, odd PCM16 byte count; nothing is sent) or
        ``NotConnectedError`` (before ``connect`` or after the session ended).
        """
        translator, converter = self._translator, self._in_conv
        if translator is None or converter is None or self.state in _ENDED:
            raise NotConnectedError(
                f"send_audio needs a connected session; the session is {self.state.value}"
            )
        data = check_frame(frame, translator.config.input_audio)
        wire = converter.convert(data)
        if wire:
            translator.audio_pushed(len(wire))
            self._push_audio(wire)

    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        """Send tool results now; the follow-up ``response.create`` goes when it is due."""
        translator = self._live_translator("send_tool_response")
        self._apply(translator.tool_responses(parse_tool_responses(responses)))
        self._state_changed()  # the results join the exported conversation

    def report_playback(self, response_id: str | None, played_ms: int) -> None:
        """Barge-in truncates at the caller's reported position (see ``RealtimeAudioClient``)."""
        if self._translator is not None:
            self._translator.report_playback(response_id, played_ms, time.monotonic())

    def _request_response(self, instruction: str | None) -> None:
        translator = self._live_translator("request_response")
        check_instruction(instruction)
        self._apply(translator.request_response(instruction))

    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        """Change the live session in place with ``session.update`` (only the changed fields).

        Resolves after ``session.updated`` and emits ``config-updated`` (strategy ``in-place``).
        A voice change after the model produced audio is reported as a recoverable ``error``
        event ``cannot_update_voice`` and the other changes are still applied. Raises
        ``ConfigRejectedError`` when the server rejects the update (the config is unchanged).
        """
        update = parse_update(config)
        async with self._update_lock:
            await self._wait_live(self._update_timeout_s)
            await self._update(update)
        self.emit("config-updated", ConfigUpdatedEvent(strategy="in-place"))

    async def _update(self, update: RealtimeSessionConfigUpdate) -> None:
        translator = self._live_translator("update_config")
        plan = translator.update(update)
        if plan.previous.input_audio != plan.config.input_audio:
            self._setup_input(plan.config)
        if plan.event_id is None:
            self._apply(plan.actions)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._update_waiters[plan.event_id] = waiter
        self._apply(plan.actions)
        try:
            await asyncio.wait_for(waiter, self._update_timeout_s)
        except ConfigRejectedError as exc:
            if plan.previous.input_audio != plan.config.input_audio:
                self._setup_input(plan.previous)
            if exc.code == "cannot_update_voice" and "voice" in update.model_fields_set:
                # The server saw audio we did not: report it, apply the rest.
                self.emit("error", ErrorEvent(code=exc.code, message=exc.message, recoverable=True))
                rest = update.model_dump(exclude_unset=True)
                rest.pop("voice")
                await self._update(RealtimeSessionConfigUpdate.model_validate(rest))
                return
            raise
        except TimeoutError as exc:
            translator.forget_update(plan.event_id)
            raise ProviderConnectionError(
                f"the server did not confirm the session update within "
                f"{self._update_timeout_s:g} s",
                code="update_timeout",
            ) from exc
        finally:
            self._update_waiters.pop(plan.event_id, None)

    # ------------------------------------------------------------------ takeover state

    def export_state(self) -> dict[str, Any]:
        """``{"items": [...]}``: the conversation as GA items (text messages, function calls
        and outputs, capped at ``replay_max_chars``), for a client in another process."""
        if self._translator is None:
            return {}
        items = self._translator.replay_items()
        return {"items": items} if items else {}

    def import_state(self, state: dict[str, Any]) -> Literal["resumed", "replayed"] | None:
        """Replay an exported conversation on the following ``connect`` (strategy
        ``replayed``); ``None`` when ``state`` has no usable items."""
        items = state.get("items") if isinstance(state, dict) else None
        if not isinstance(items, list) or not items:
            return None
        probe = OpenAITranslator(RealtimeSessionConfig())
        try:
            probe.import_items(items)
        except ConfigError as exc:
            log.warning("cannot import the exported OpenAI conversation: %s", exc)
            return None
        self._imported = list(items)
        return "replayed"

    # ------------------------------------------------------------------ transport hooks

    def _endpoint(self) -> Endpoint:
        key = self._resolve_key()
        parts = urllib.parse.urlsplit(self._base_url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not any(name == "model" for name, _ in query):
            query.append(("model", self.model))
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        if self._auth_header == "api-key":
            headers = {"api-key": key}
        else:
            headers = {"Authorization": f"Bearer {key}"}
        return Endpoint(url=url, headers=headers, display_url=url)

    def _handshake_frames(self, *, reconnect: bool) -> list[Frame]:
        return self._require_translator().handshake_frames(reconnect=reconnect)

    def _handle_message(self, message: Frame) -> None:
        self._apply(self._require_translator().receive(message, time.monotonic()))

    def _audio_message(self, chunk: bytes) -> Frame:
        return self._require_translator().audio_frame(chunk)

    def _classify_close(self, code: int | None, reason: str) -> ProviderError:
        text = f"OpenAI closed the connection (code {code}, reason {reason!r})"
        translator = self._translator
        if self._in_handshake and translator is not None and translator.handshake_error:
            # The server said why before closing (e.g. beta_api_shape_disabled, close 4000).
            return translator.handshake_error
        if code == 1008 or (code in _CLOSE_FATAL and any(c in reason for c in FATAL_ERROR_CODES)):
            return ProviderAuthError(text, code=str(code))
        if code is not None and 4000 <= code <= 4999:
            return ConfigRejectedError(text, code=str(code))
        if code in _CLOSE_FATAL:
            return ProviderConnectionError(text, code=str(code), recoverable=False)
        return super()._classify_close(code, reason)

    def _classify_status(self, status: int, body: bytes) -> ProviderError:
        mapped = super()._classify_status(status, body)
        try:
            error = orjson.loads(body).get("error") if body else None
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            message = error.get("message")
            if isinstance(code, str) and code:
                text = f"OpenAI refused the connection (HTTP {status}, {code}): {message or ''}"
                if code in FATAL_ERROR_CODES:
                    return ProviderAuthError(text.rstrip(": "), code=code)
                return type(mapped)(text.rstrip(": "), code=code, recoverable=mapped.recoverable)
        return mapped

    def _reset_connection_state(self) -> None:
        self._apply(self._require_translator().reset_connection())

    def _filter_held(self, frames: list[Frame]) -> list[Frame]:
        return self._require_translator().filter_held(frames)

    def _after_handshake(self, *, reconnect: bool) -> None:
        self._apply(self._require_translator().after_handshake())

    def _is_idle(self) -> bool:
        return self._translator is None or self._translator.is_idle()

    def _on_closed(self) -> None:
        for waiter in self._update_waiters.values():
            if not waiter.done():
                waiter.set_exception(NotConnectedError("the session closed during the update"))
        self._update_waiters.clear()

    # ------------------------------------------------------------------ internals

    def _on_signal(self, signal: Signal) -> None:
        if isinstance(signal, HandshakeDone):
            self._handshake_done()
        elif isinstance(signal, HandshakeFailed):
            self._handshake_failed(signal.error)
        elif isinstance(signal, UpdateDone | UpdateFailed):
            waiter = self._update_waiters.get(signal.event_id)
            if waiter is not None and not waiter.done():
                if isinstance(signal, UpdateDone):
                    waiter.set_result(None)
                else:
                    waiter.set_exception(signal.error)
        elif isinstance(signal, Fatal):
            self._fail(signal.error)
        elif isinstance(signal, Reconnect):
            self._start_reconnect(signal.reason)
        else:
            super()._on_signal(signal)

    def _setup_input(self, config: RealtimeSessionConfig) -> None:
        wire = wire_format(config.input_audio)
        self._in_conv = AudioConverter(config.input_audio, wire)
        self._set_audio_capacity(_buffer_bytes(self._max_buffer_ms, wire.bytes_per_second // 1000))

    def _resolve_key(self) -> str:
        key = self._api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        host = urllib.parse.urlsplit(self._base_url).hostname or ""
        if host in _LOOPBACK_HOSTS or host.startswith("127."):
            return _LOOPBACK_KEY
        raise ConfigError(
            "no OpenAI API key: pass api_key=... or set OPENAI_API_KEY (only a loopback "
            "simulator URL works without one)"
        )

    def _require_translator(self) -> OpenAITranslator:
        if self._translator is None:
            raise NotConnectedError("the session is not connected; call connect() first")
        return self._translator

    def _live_translator(self, what: str) -> OpenAITranslator:
        if self._translator is None or self.state in _ENDED:
            raise NotConnectedError(f"{what} needs a connected session; it is {self.state.value}")
        return self._translator


_ENDED = frozenset({SessionState.IDLE, SessionState.CLOSING, SessionState.CLOSED})


def _buffer_bytes(max_ms: int, bytes_per_ms: int) -> int:
    return max(1, max_ms * bytes_per_ms)
