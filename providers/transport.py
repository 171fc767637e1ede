"""Provider-neutral WebSocket session machinery shared by the provider clients.

This is the only module (besides the simulators) that imports ``websockets``. A provider client
subclasses :class:`WebSocketRealtimeClient`, keeps its wire logic in a pure translator, and
implements a handful of hooks; everything about sockets, ordering, buffering, reconnecting and
the session lifecycle lives here.

What the base does
------------------
- **Open** a socket per connection with ``compression=None`` and ``max_size=None`` (provider
  frames carry base64 audio and can be large), the provider's URL and headers
  (:class:`Endpoint`), and the provider's keepalive policy (``ping_interval_s`` /
  ``ping_timeout_s``; ``None`` disables keepalive pings, e.g. for Gemini's slow pongs).
- **Receive loop** per connection: text *and* binary frames are parsed with ``orjson``; a frame
  that is not a JSON object is logged and reported as a recoverable ``error`` event
  (``malformed_frame``) and the session goes on. Each message goes to ``_handle_message``.
- **Translator actions** (the shape in :mod:`providers.translator`): ``_apply`` emits each
  ``Emit``, sends each ``Send`` and hands each ``Signal`` to the subclass's ``_on_signal``.
- **Writer**: one task per session sends everything, serialized with ``orjson`` as text frames.
  Control frames (``_send``) are ordered after all audio pushed before them (an audio byte
  barrier), so e.g. a commit or a format change never overtakes the audio it refers to.
- **Audio pump**: ``_push_audio`` feeds a bounded :class:`protocol.AudioSendBuffer` (drop-oldest,
  counted in :attr:`audio_stats`); the first drop of an overflow episode emits one recoverable
  ``error`` event ``audio_buffer_overflow``; the episode ends when the buffer drains. Queued
  audio is coalesced into larger wire frames when a backlog built up (e.g. after a reconnect).
- **Exactly once**: a frame (audio or control) counts as sent once the socket *took* it (it was
  OPEN and the frame was written into it); the transport never re-sends such a frame. A frame the
  socket did not take stays queued and goes out on the next connection, after its handshake.
  ``_frame_taken`` tells the subclass about every frame a socket took, in order. The one
  deliberate exception is provider-side resumption that restores an *older* state (Gemini: a
  handle restores the session as of the moment it was issued): the Gemini client keeps the frames
  the socket took after that moment and queues them again, ahead of everything held, on the
  resumed connection (``providers/gemini/resume.py``). Those are frames the transport no longer
  holds, so nothing is sent twice by the two mechanisms together.
- **Lifecycle** through :class:`protocol.client.StateMachine`: ``idle -> connecting -> live
  -> reconnecting -> live ... -> closing -> closed``. ``connected`` is emitted once when
  ``connect`` resolves, ``reconnecting`` / ``reconnected`` around every reconnect, ``closed``
  exactly once when the session ends (never during a reconnect).
- **Reconnect** after an unexpected close or a send failure: up to ``reconnect_attempts`` tries
  with exponential backoff and full jitter (``protocol.backoff``: ``backoff_initial_s`` doubling
  up to ``backoff_max_s``, each delay drawn uniformly below that). The old socket is always
  closed before the new handshake starts. A fatal error (``ProviderError.recoverable`` false,
  from the classification hooks or from the subclass via ``_fail``) ends the session: ``error``
  event with ``recoverable=False``, then ``closed``; no retry loop.
- **Recycle**: with ``recycle_after_s`` set, the connection is replaced the same way once that
  much time has passed *and* ``_is_idle()`` says the session is between turns (checked after
  every received message), so a provider's connection-time cap is never hit mid-turn.
- ``ping()`` is a WebSocket ping answered by a pong within ``ping_timeout_s`` (default 10 s
  when keepalive is off); ``disconnect()`` closes with 1000, idempotent, ``closed`` once.
- Secrets: headers are never logged (``websockets``' own DEBUG logging, which prints request
  headers, is disabled for these connections); ``Endpoint.display_url`` is what logs show.
- ``websockets`` exceptions are mapped to :mod:`protocol.errors` here (``raise ... from exc``):
  HTTP status on the upgrade -> ``_classify_status``, close codes -> ``_classify_close``,
  network errors and timeouts -> :class:`ProviderConnectionError`, a bad URL -> ``ConfigError``.

Hooks a subclass implements
---------------------------
Required:

``_endpoint() -> Endpoint``
    URL, headers and a log-safe URL for a new connection (called for every connection).
``_handshake_frames(*, reconnect: bool) -> list[Frame]``
    Frames sent first on a new socket (setup / session config; on a reconnect also whatever
    restores state, e.g. a resumption handle or a conversation replay).
``_handle_message(message: Frame) -> None``
    One parsed server message. During a handshake it must eventually call
    ``_handshake_done()`` or ``_handshake_failed(error)``. It may call ``_send``, ``emit``,
    ``_emit_error``, ``_fail`` and ``_start_reconnect``. Raising ``ProviderProtocolError``
    reports a malformed message as a recoverable ``error`` event ``malformed_frame`` (after
    applying the ``salvaged`` actions of a :class:`providers.translator.MalformedFrame`); any
    other exception is logged and reported as ``internal_error`` (recoverable); the session goes
    on either way.
``_audio_message(chunk: bytes) -> Frame``
    The wire frame that carries one chunk of (already converted) input audio.

Optional (defaults in brackets):

``_classify_close(code, reason) -> ProviderError``
    [1000/1001/1005/1006/1011-1014 and no code are retryable ``ProviderConnectionError``;
    1002/1003/1007/1008/1009/1010 and 4xxx are fatal] whether a close may be retried.
``_classify_status(status, body) -> ProviderError``
    [401/403 -> ``ProviderAuthError``; 400/404/422 -> ``ConfigRejectedError``; other ->
    retryable ``ProviderConnectionError``] an HTTP status that refused the upgrade.
``_reset_connection_state() -> None``
    [nothing] the old connection is gone: drop per-connection state before the new handshake.
``_filter_held(frames) -> list[Frame]``
    [keep all] control frames the old socket did not take; return those still to be sent on
    the new connection (e.g. drop ones that a replay re-creates).
``_after_handshake(*, reconnect: bool) -> None``
    [nothing] the connection is live again; the subclass may ``_send`` regenerated frames.
``_reconnect_strategy() -> Strategy``
    ["replayed"] what ``reconnected`` reports (``resumed`` with a provider resumption handle).
``_is_idle() -> bool``
    [True] the session is between turns, so a planned recycle may run now.
``_on_closed() -> None``
    [nothing] the session ended (called once, just before ``closed``): fail pending waiters.
``_on_signal(signal) -> None``
    [raise ``TypeError``] act on one provider-specific ``Signal`` a translator returned.
``_frame_taken(frame, audio, size) -> None``
    [nothing] a socket just took ``frame`` (``audio``: the raw chunk of an audio frame, else
    None; ``size``: its serialized bytes); called in send order, before the socket write, from
    the writer task. Must not raise.

Helpers a subclass calls: ``_open_session()`` (from ``connect``), ``_apply(actions)``,
``_send(frame)``,
``_send_first(frames)`` (ahead of everything queued, e.g. a seed after a reconnect handshake),
``_push_audio(chunk)``, ``_handshake_done()``, ``_handshake_failed(error)``, ``_fail(error)``,
``_emit_error(code, message, recoverable=True)``, ``_start_reconnect(reason)`` /
``await _reconnect(reason)`` (planned reconnect: no backoff before the first attempt, old socket
closed first), ``await _wait_live(limit_s)``, ``_set_audio_capacity(max_bytes)``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from protocol.backoff import Backoff
from protocol.client import AudioSendBuffer, RealtimeAudioClient, SessionState
from protocol.config import RealtimeToolResponse
from protocol.errors import (
    ConfigError,
    ConfigRejectedError,
    NotConnectedError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    UsageError,
)
from protocol.events import ConnectionEvent, ErrorEvent
from providers.translator import (
    Action,
    Emit,
    Frame,
    MalformedFrame,
    Send,
    Signal,
    malformed_frame_error,
    parse_frame,
)

__all__ = [
    "AudioStats",
    "Endpoint",
    "Frame",
    "NoDebugLogger",
    "Strategy",
    "TransportOptions",
    "WebSocketRealtimeClient",
    "check_api_key",
    "check_instruction",
    "check_ws_url",
    "merge_options",
    "parse_tool_responses",
    "require_positive_ints",
]

log = logging.getLogger("voicegrid.transport")

Strategy = Literal["in-place", "resumed", "replayed"]

_RETRYABLE_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})
_MAX_LOGGED_FRAME = 200


@dataclass(frozen=True)
class Endpoint:
    """Where and how to open one connection.

    ``headers`` may carry credentials and are never logged; ``display_url`` is what logs and
    error messages show (it must not contain a key).
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    display_url: str = ""

    def safe_url(self) -> str:
        return self.display_url or self.url.split("?", 1)[0]


def merge_options(
    owner: str, defaults: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an unknown option name is a ``ConfigError``."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown {owner} option(s) {unknown}; expected some of {sorted(defaults)}"
        )
    return {**defaults, **options}


def require_positive_ints(options: Mapping[str, Any], *names: str) -> None:
    """Each named option must be an int > 0 (bools are not ints here)."""
    for name in names:
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"option {name}={value!r} is invalid; expected a positive int")


def check_api_key(api_key: object, env_var: str) -> None:
    """An explicit ``api_key`` must be a non-empty string (``None`` means ``env_var``)."""
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ConfigError(f"api_key must be a non-empty string or None ({env_var})")


def parse_tool_responses(responses: object) -> list[RealtimeToolResponse]:
    """The argument of ``send_tool_response`` as validated responses (dicts are parsed);
    ``ConfigError`` for anything else, before any is sent."""
    if not isinstance(responses, list | tuple):
        raise ConfigError(
            "send_tool_response takes a list of RealtimeToolResponse, got "
            f"{type(responses).__name__}"
        )
    parsed: list[RealtimeToolResponse] = []
    for response in responses:
        if isinstance(response, RealtimeToolResponse):
            parsed.append(response)
        elif isinstance(response, dict):
            try:
                parsed.append(RealtimeToolResponse.model_validate(response))
            except ValueError as exc:
                raise ConfigError(f"invalid tool response {response!r}: {exc}") from exc
        else:
            raise ConfigError(
                "tool response must be a RealtimeToolResponse or dict, got "
                f"{type(response).__name__}"
            )
    return parsed


def check_instruction(instruction: object) -> None:
    """The instruction of ``request_response`` must be a string or None."""
    if instruction is not None and not isinstance(instruction, str):
        raise ConfigError(f"instruction must be a string or None, got {type(instruction).__name__}")


def check_ws_url(url: object, expected: str) -> None:
    """``url`` must be a ``ws://`` or ``wss://`` URL with a host; the error never shows a query
    string (it may carry a key)."""
    if not isinstance(url, str):
        raise ConfigError(f"url must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"url {url.split('?', 1)[0]!r} is invalid; expected a ws:// or wss:// {expected}"
        )


@dataclass(frozen=True)
class TransportOptions:
    """Connection policy of one session (see the module docstring).

    ``max_buffer_bytes`` bounds the outgoing audio buffer (wire bytes); ``max_chunk_bytes``
    bounds how much queued audio one wire frame may carry when a backlog is coalesced.
    """

    max_buffer_bytes: int
    reconnect_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    recycle_after_s: float | None = None
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    open_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    max_chunk_bytes: int = 96_000

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, max_buffer_bytes: int) -> TransportOptions:
        """The transport policy from a client's merged options (the names that match fields)."""
        names = {f.name for f in fields(cls)} - {"max_buffer_bytes"}
        return cls(
            max_buffer_bytes=max_buffer_bytes,
            **{name: options[name] for name in names if name in options},
        )

    def __post_init__(self) -> None:
        checks: list[tuple[str, float | None, float]] = [
            ("max_buffer_bytes", self.max_buffer_bytes, 1),
            ("reconnect_attempts", self.reconnect_attempts, 0),
            ("backoff_initial_s", self.backoff_initial_s, 0),
            ("backoff_max_s", self.backoff_max_s, 0),
            ("open_timeout_s", self.open_timeout_s, 0.001),
            ("handshake_timeout_s", self.handshake_timeout_s, 0.001),
            ("close_timeout_s", self.close_timeout_s, 0),
            ("max_chunk_bytes", self.max_chunk_bytes, 1),
        ]
        for opt in ("recycle_after_s", "ping_interval_s", "ping_timeout_s"):
            value = getattr(self, opt)
            if value is not None:
                checks.append((opt, value, 0.001))
        for name, value, minimum in checks:
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value != value
                or value < minimum
            ):
                raise ConfigError(
                    f"option {name}={value!r} is invalid; expected a number >= {minimum}"
                )


@dataclass
class AudioStats:
    """Counters of the outgoing audio path (wire bytes)."""

    pushed_bytes: int = 0
    sent_bytes: int = 0
    sent_frames: int = 0
    dropped_frames: int = 0
    dropped_bytes: int = 0
    buffered_bytes: int = 0
    overflow_episodes: int = 0


@dataclass(frozen=True)
class _Outgoing:
    """A frame about to be sent; ``audio`` is the raw chunk of an audio frame."""

    frame: Frame
    audio: bytes | None
    barrier: int


class NoDebugLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``websockets`` logs every request header at DEBUG, API keys included: never let it."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WS_LOGGER = NoDebugLogger(logging.getLogger("voicegrid.transport.websockets"), {})


class _Link:
    """One WebSocket connection of a session."""

    __slots__ = ("lost", "number", "recv_task", "retired", "ws")

    def __init__(self, ws: ClientConnection, number: int) -> None:
        self.ws = ws
        self.number = number
        self.retired = False
        self.lost: ProviderError | None = None  # why the socket closed, once it did
        self.recv_task: asyncio.Task[None] | None = None


class WebSocketRealtimeClient(RealtimeAudioClient):
    """Base class of WebSocket provider clients; see the module docstring for the hooks."""

    def __init__(self, *, model: str, transport: TransportOptions) -> None:
        super().__init__(model=model)
        self._transport = transport
        self._buffer = AudioSendBuffer(transport.max_buffer_bytes)
        self._stats = AudioStats()
        self._audio_done_bytes = 0  # bytes that left the buffer: taken by a socket or dropped
        self._overflowing = False
        self._control: deque[tuple[int, Frame]] = deque()  # (audio byte barrier, frame)
        self._link: _Link | None = None
        self._links_opened = 0
        self._writable = False
        self._wake = asyncio.Event()
        self._live = asyncio.Event()
        self._handshake_waiter: asyncio.Future[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recycle_handle: asyncio.TimerHandle | None = None
        self._recycle_due = False
        self._closed_emitted = False
        self._final_error: ProviderError | None = None

    # ------------------------------------------------------------------ hooks (required)

    @abc.abstractmethod
    def _endpoint(self) -> Endpoint:
        """URL, headers and log-safe URL for a new connection."""

    @abc.abstractmethod
    def _handshake_frames(self, *, reconnect: bool) -> list[Frame]:
        """Frames sent first on a new socket (session setup; state restore on a reconnect)."""

    @abc.abstractmethod
    def _handle_message(self, message: Frame) -> None:
        """Handle one parsed server message (see the module docstring)."""

    @abc.abstractmethod
    def _audio_message(self, chunk: bytes) -> Frame:
        """The wire frame carrying one chunk of converted input audio."""

    # ------------------------------------------------------------------ hooks (optional)

    def _classify_close(self, code: int | None, reason: str) -> ProviderError:
        text = f"provider closed the connection (code {code}, reason {reason!r})"
        if code is None or code in _RETRYABLE_CLOSE_CODES:
            return ProviderConnectionError(text, code=str(code or 1006), recoverable=True)
        return ProviderConnectionError(text, code=str(code), recoverable=False)

    def _classify_status(self, status: int, body: bytes) -> ProviderError:
        detail = body[:300].decode("utf-8", "replace").strip()
        text = f"provider refused the WebSocket upgrade with HTTP {status}" + (
            f": {detail}" if detail else ""
        )
        if status in (401, 403):
            return ProviderAuthError(text + "; check the API key", code=f"http_{status}")
        if status in (400, 404, 422):
            return ConfigRejectedError(text + "; check the model and URL", code=f"http_{status}")
        return ProviderConnectionError(text, code=f"http_{status}", recoverable=True)

    def _reset_connection_state(self) -> None:
        """The old connection is gone; drop per-connection state (default: nothing)."""

    def _filter_held(self, frames: list[Frame]) -> list[Frame]:
        return frames

    def _after_handshake(self, *, reconnect: bool) -> None:
        """The connection is live (again); the subclass may enqueue frames."""

    def _reconnect_strategy(self) -> Strategy:
        return "replayed"

    def _is_idle(self) -> bool:
        return True

    def _on_closed(self) -> None:
        """The session has ended (just before ``closed``): fail whatever still waits."""

    def _on_signal(self, signal: Signal) -> None:
        """Act on a provider-specific signal of the translator (see :meth:`_apply`)."""
        raise TypeError(f"{type(self).__name__} does not handle the signal {signal!r}")

    def _frame_taken(self, frame: Frame, audio: bytes | None, size: int) -> None:
        """A socket took ``frame`` (the exactly-once point); the default does nothing."""

    # ------------------------------------------------------------------ public API

    @property
    def audio_stats(self) -> AudioStats:
        """Counters of the outgoing audio path (a snapshot)."""
        self._stats.buffered_bytes = self._buffer.size
        self._stats.dropped_frames = self._buffer.dropped_frames
        self._stats.dropped_bytes = self._buffer.dropped_bytes
        return AudioStats(**vars(self._stats))

    async def disconnect(self) -> None:
        """Close with 1000 and emit ``closed`` once; idempotent, also during a reconnect."""
        if self.state in (SessionState.IDLE, SessionState.CLOSED):
            if self.state is SessionState.IDLE:
                self._lifecycle.to(SessionState.CLOSED)
            return
        if self.state is SessionState.CLOSING:
            await self._wait_closed()
            return
        await self._shutdown(reason="client disconnect", code=1000)

    async def ping(self) -> bool:
        """True when the live socket answers a WebSocket ping in time."""
        link = self._link
        if self.state is not SessionState.LIVE or link is None or not self._writable:
            return False
        timeout = self._transport.ping_timeout_s or 10.0
        try:
            waiter = await link.ws.ping()
            await asyncio.wait_for(waiter, timeout)
        except (ConnectionClosed, TimeoutError, RuntimeError):
            return False
        return True

    # ------------------------------------------------------------------ helpers for subclasses

    async def _open_session(self) -> None:
        """Connect for the first time: socket, handshake, writer; emits ``connected``.

        Raises the mapped ``ProviderError`` (or ``ConfigError``) when it fails; the client is
        then back in ``idle`` and may try ``connect`` again. No retry happens here.
        """
        if self._lifecycle.state is not SessionState.IDLE:
            raise UsageError(
                f"connect() called on a {self.state.value} session; create a new client for a "
                "new session"
            )
        self._lifecycle.to(SessionState.CONNECTING)
        self._closed_emitted = False
        try:
            await self._establish(reconnect=False)
        except BaseException:
            await self._teardown_links()
            if self.state is SessionState.CONNECTING:
                self._lifecycle.to(SessionState.IDLE)
            raise
        if self.state is not SessionState.CONNECTING:  # disconnect() ran meanwhile
            raise NotConnectedError("the session was closed while connecting")
        self._writer_task = self._spawn(self._writer(), "voicegrid-writer")
        self._go_live(reconnect=False)
        self.emit("connected", ConnectionEvent(reason="connected"))
        self._check_link()

    def _apply(self, actions: Iterable[Action]) -> None:
        """Carry out a translator's actions in order: emit, send, or ``_on_signal``."""
        for action in actions:
            if isinstance(action, Emit):
                self.emit(action.name, action.payload)
            elif isinstance(action, Send):
                self._send(action.frame)
            else:
                self._on_signal(action)

    def _send(self, frame: Frame) -> None:
        """Queue a control frame; it goes out after all audio pushed so far."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            log.debug("dropping %s frame: session is %s", frame.get("type"), self.state.value)
            return
        self._control.append((self._stats.pushed_bytes, frame))
        self._wake.set()

    def _send_first(self, frames: list[Frame]) -> None:
        """Queue control frames ahead of everything still queued (held audio and frames).

        For state a fresh connection needs before any held traffic, e.g. a conversation seed a
        provider only accepts after its handshake (call it from ``_after_handshake``).
        """
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        for frame in reversed(frames):
            self._control.appendleft((self._audio_done_bytes, frame))
        self._wake.set()

    def _push_audio(self, chunk: bytes) -> None:
        """Queue wire-format audio; never blocks; drop-oldest when the buffer is full."""
        if not chunk:
            return
        before = self._buffer.dropped_bytes
        dropped = self._buffer.push(chunk)
        self._stats.pushed_bytes += len(chunk)
        if dropped:
            self._audio_done_bytes += self._buffer.dropped_bytes - before
            if not self._overflowing:
                self._overflowing = True
                self._stats.overflow_episodes += 1
                self._emit_error(
                    "audio_buffer_overflow",
                    f"outgoing audio buffer full ({self._buffer.max_bytes} bytes); dropped the "
                    f"oldest {dropped} frame(s) to keep the newest audio (the provider is not "
                    "taking audio fast enough or the session is reconnecting)",
                    recoverable=True,
                )
        self._wake.set()

    def _set_audio_capacity(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"audio buffer size must be positive, got {max_bytes!r}")
        self._buffer.max_bytes = max_bytes

    def _handshake_done(self) -> None:
        waiter = self._handshake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _handshake_failed(self, error: ProviderError) -> None:
        waiter = self._handshake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    @property
    def _in_handshake(self) -> bool:
        waiter = self._handshake_waiter
        return waiter is not None and not waiter.done()

    def _emit_error(self, code: str, message: str, *, recoverable: bool = True) -> None:
        self.emit("error", ErrorEvent(code=code, message=message, recoverable=recoverable))

    @property
    def final_error(self) -> ProviderError | None:
        """The fatal error that ended the session (``None`` while it lives or after a clean
        close); ``providers.fallback`` reads it to decide whether to switch providers."""
        return self._final_error

    def _fail(self, error: ProviderError) -> None:
        """End a live session on a fatal error: ``error`` (recoverable False), then ``closed``."""
        if self._in_handshake:
            self._handshake_failed(error)
            return
        if self.state in (SessionState.CLOSING, SessionState.CLOSED, SessionState.IDLE):
            return
        log.warning("%s session ends on a fatal error: %s", self.provider, error)
        self._final_error = error
        self._emit_error(error.code, error.message, recoverable=False)
        self._spawn(
            self._shutdown(reason=error.message, code=_close_code(error)),
            "voicegrid-fail",
        )

    def _start_reconnect(self, reason: str, *, code: int | None = None) -> None:
        """Replace the live connection now (planned: old socket closed first, no backoff)."""
        if self.state is not SessionState.LIVE or self._reconnect_task is not None:
            return
        self._begin_reconnect(reason=reason, code=code, planned=True)

    async def _reconnect(self, reason: str) -> None:
        """Planned reconnect and wait for its outcome; raises the error that ended the session."""
        self._start_reconnect(reason)
        task = self._reconnect_task
        if task is not None:
            await asyncio.shield(task)
        if self.state is not SessionState.LIVE:
            raise self._final_error or NotConnectedError("the session is closed")

    async def _wait_live(self, limit_s: float) -> None:
        """Wait until the session is live (e.g. a reconnect finished); raise if it ended."""
        if self.state in (SessionState.IDLE, SessionState.CLOSING, SessionState.CLOSED):
            raise NotConnectedError(f"the session is {self.state.value}; call connect() first")
        try:
            await asyncio.wait_for(self._live.wait(), limit_s)
        except TimeoutError as exc:
            raise ProviderConnectionError(
                f"the session did not become live within {limit_s:g} s", code="not_live"
            ) from exc
        if self.state is not SessionState.LIVE:
            raise NotConnectedError(f"the session is {self.state.value}")

    # ------------------------------------------------------------------ connection handling

    async def _open_link(self) -> _Link:
        endpoint = self._endpoint()
        opts = self._transport
        display = endpoint.safe_url()
        try:
            ws = await connect(
                endpoint.url,
                additional_headers=dict(endpoint.headers),
                compression=None,
                max_size=None,
                ping_interval=opts.ping_interval_s,
                ping_timeout=opts.ping_timeout_s,
                open_timeout=opts.open_timeout_s,
                close_timeout=opts.close_timeout_s,
                logger=_WS_LOGGER,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise self._classify_status(response.status_code, bytes(response.body or b"")) from exc
        except InvalidURI as exc:
            raise ConfigError(
                f"provider URL {display!r} is not a valid WebSocket URL; expected ws:// or wss://"
            ) from exc
        except InvalidHandshake as exc:
            raise ProviderConnectionError(
                f"WebSocket handshake with {display} failed: {type(exc).__name__}",
                code="handshake_failed",
            ) from exc
        except TimeoutError as exc:
            raise ProviderConnectionError(
                f"opening {display} timed out after {opts.open_timeout_s:g} s",
                code="connect_timeout",
            ) from exc
        except OSError as exc:
            raise ProviderConnectionError(
                f"could not connect to {display}: {exc.strerror or type(exc).__name__}",
                code="connect_failed",
            ) from exc
        self._links_opened += 1
        log.debug("connection %d to %s open", self._links_opened, display)
        return _Link(ws, self._links_opened)

    async def _establish(self, *, reconnect: bool) -> None:
        """Open a socket, send the handshake and wait until the subclass says it is done."""
        link = await self._open_link()
        self._link = link
        loop = asyncio.get_running_loop()
        self._handshake_waiter = loop.create_future()
        link.recv_task = self._spawn(self._receive(link), f"voicegrid-recv-{link.number}")
        try:
            for frame in self._handshake_frames(reconnect=reconnect):
                await link.ws.send(_dumps(frame))
            await asyncio.wait_for(
                asyncio.shield(self._handshake_waiter), self._transport.handshake_timeout_s
            )
        except ConnectionClosed as exc:
            # The socket closed under the handshake: the receive loop classifies the close.
            error = await self._handshake_close_error()
            await self._retire(link)
            raise error from exc
        except TimeoutError as exc:
            await self._retire(link)
            raise ProviderConnectionError(
                "the provider did not finish the handshake within "
                f"{self._transport.handshake_timeout_s:g} s",
                code="handshake_timeout",
            ) from exc
        except BaseException:
            await self._retire(link)
            raise
        finally:
            self._handshake_waiter = None

    async def _handshake_close_error(self) -> ProviderError:
        waiter = self._handshake_waiter
        if waiter is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(waiter), self._transport.close_timeout_s)
            if waiter.done() and not waiter.cancelled():
                error = waiter.exception()
                if isinstance(error, ProviderError):
                    return error
        return ProviderConnectionError(
            "the connection closed during the handshake", code="handshake_closed"
        )

    def _go_live(self, *, reconnect: bool) -> None:
        self._lifecycle.to(SessionState.LIVE)
        if reconnect:
            held = list(self._control)
            keep = {id(f) for f in self._filter_held([f for _b, f in held])}
            self._control = deque((b, f) for b, f in held if id(f) in keep)
            if len(self._control) != len(held):
                log.debug("%d held control frame(s) superseded", len(held) - len(self._control))
        self._after_handshake(reconnect=reconnect)
        self._writable = True
        self._live.set()
        self._wake.set()
        self._schedule_recycle()

    async def _receive(self, link: _Link) -> None:
        try:
            async for data in link.ws:
                self._dispatch_frame(data)
                if self._recycle_due:
                    self._maybe_recycle()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receive loop of connection %d failed", link.number)
            with contextlib.suppress(Exception):
                await link.ws.close(1011, "client receive error")
        self._on_link_closed(link)

    def _dispatch_frame(self, data: str | bytes) -> None:
        try:
            message = parse_frame(data)
        except ProviderProtocolError as exc:
            self._report_malformed(data, exc.message)
            return
        try:
            self._handle_message(message)
        except ProviderProtocolError as exc:
            if isinstance(exc, MalformedFrame):
                self._apply(exc.salvaged)
            self._report_malformed(data, exc.message)
        except Exception as exc:
            log.exception("handling a %r message failed", message.get("type"))
            self._emit_error(
                "internal_error",
                f"handling a {message.get('type')!r} message failed: {type(exc).__name__}",
                recoverable=True,
            )

    def _report_malformed(self, data: str | bytes, why: str) -> None:
        shown = data[:_MAX_LOGGED_FRAME]
        log.warning("malformed frame from the provider (%s): %r", why, shown)
        self.emit("error", malformed_frame_error(why))

    def _on_link_closed(self, link: _Link) -> None:
        if link.retired or link is not self._link:
            return
        ws = link.ws
        error = self._classify_close(ws.close_code, ws.close_reason or "")
        link.lost = error
        self._writable = False
        if self._in_handshake:
            self._handshake_failed(error)
            return
        # Not live yet (the handshake just finished): _check_link handles it once it is.
        self._check_link()

    def _check_link(self) -> None:
        """React to the loss of the current socket if it closed and the session is live."""
        link = self._link
        if link is None or link.lost is None or self.state is not SessionState.LIVE:
            return
        error = link.lost
        if error.recoverable:
            log.info("%s connection %d lost (%s); reconnecting", self.provider, link.number, error)
            self._begin_reconnect(reason=error.message, code=link.ws.close_code, planned=False)
        else:
            self._fail(error)

    # ------------------------------------------------------------------ reconnect / recycle

    def _begin_reconnect(self, *, reason: str, code: int | None, planned: bool) -> None:
        self._lifecycle.to(SessionState.RECONNECTING)
        self._writable = False
        self._live.clear()
        self._cancel_recycle()
        self.emit("reconnecting", ConnectionEvent(reason=reason, code=code))
        self._reconnect_task = self._spawn(
            self._reconnect_loop(planned=planned), "voicegrid-reconnect"
        )

    async def _reconnect_loop(self, *, planned: bool) -> None:
        try:
            old = self._link
            if old is not None:
                await self._retire(old)
            self._link = None
            self._reset_connection_state()
            opts = self._transport
            last: ProviderError | None = None
            backoff = Backoff(
                opts.backoff_initial_s, max(opts.backoff_initial_s, opts.backoff_max_s)
            )
            for attempt in range(opts.reconnect_attempts):
                if attempt or not planned:
                    await backoff.wait()
                if self.state is not SessionState.RECONNECTING:
                    return
                try:
                    await self._establish(reconnect=True)
                except ProviderError as exc:
                    last = exc
                    await self._teardown_links()
                    if not exc.recoverable:
                        break
                    log.info(
                        "reconnect attempt %d/%d failed: %s",
                        attempt + 1,
                        opts.reconnect_attempts,
                        exc,
                    )
                    self._reset_connection_state()
                    continue
                if self.state is not SessionState.RECONNECTING:
                    await self._teardown_links()
                    return
                self._reconnect_task = None
                self._go_live(reconnect=True)
                self.emit(
                    "reconnected",
                    ConnectionEvent(reason="reconnected", strategy=self._reconnect_strategy()),
                )
                self._check_link()
                return
            self._reconnect_task = None
            if last is None:
                last = ProviderConnectionError(
                    "reconnecting is disabled (reconnect_attempts=0)", code="reconnect_failed"
                )
            elif last.recoverable:
                last = ProviderConnectionError(
                    f"gave up reconnecting after {opts.reconnect_attempts} attempt(s): "
                    f"{last.message}",
                    code="reconnect_failed",
                    recoverable=False,
                )
            self._fail(last)
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    def _schedule_recycle(self) -> None:
        self._cancel_recycle()
        after = self._transport.recycle_after_s
        if after is None:
            return
        loop = asyncio.get_running_loop()
        self._recycle_handle = loop.call_later(after, self._on_recycle_timer)

    def _cancel_recycle(self) -> None:
        if self._recycle_handle is not None:
            self._recycle_handle.cancel()
            self._recycle_handle = None
        self._recycle_due = False

    def _on_recycle_timer(self) -> None:
        self._recycle_handle = None
        self._recycle_due = True
        self._maybe_recycle()

    def _maybe_recycle(self) -> None:
        if not self._recycle_due or self.state is not SessionState.LIVE:
            return
        if not self._is_idle():
            return
        self._recycle_due = False
        log.info("%s connection recycled before the provider's time cap", self.provider)
        self._begin_reconnect(reason="recycle", code=None, planned=True)

    # ------------------------------------------------------------------ writer

    def _next_outgoing(self) -> _Outgoing | None:
        """The next frame to send: the head control frame once the audio before it went out,
        else queued audio (coalesced up to the next barrier or ``max_chunk_bytes``)."""
        if self._control:
            barrier, frame = self._control[0]
            if self._audio_done_bytes >= barrier:
                self._control.popleft()
                return _Outgoing(frame, None, barrier)
            limit = barrier - self._audio_done_bytes
        else:
            limit = self._transport.max_chunk_bytes
        parts: list[bytes] = []
        total = 0
        while total < limit:
            chunk = self._buffer.pop()
            if chunk is None:
                break
            if parts and total + len(chunk) > limit:
                self._buffer.unpop(chunk)
                break
            parts.append(chunk)
            total += len(chunk)
        if not parts:
            return None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._audio_done_bytes += total
        return _Outgoing(self._audio_message(data), data, 0)

    def _requeue(self, item: _Outgoing) -> None:
        """Put back a frame no socket took; it keeps its place in the order."""
        if item.audio is None:
            self._control.appendleft((item.barrier, item.frame))
        else:
            self._buffer.unpop(item.audio)
            self._audio_done_bytes -= len(item.audio)

    async def _writer(self) -> None:
        while True:
            if not self._writable or self._link is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._next_outgoing()
            if item is None:
                if self._buffer.size == 0:
                    self._overflowing = False  # the overflow episode (if any) is over
                self._wake.clear()
                await self._wake.wait()
                continue
            link = self._link
            if link.ws.state is not State.OPEN:
                # No socket took it: it goes out on the next connection, after the handshake.
                self._requeue(item)
                self._writable = False
                continue
            try:
                data = _dumps(item.frame)
                # The state was OPEN with no await in between, so the socket takes the frame
                # now; if the connection fails while draining, it is lost with that socket and
                # never re-sent by the transport (exactly once).
                self._frame_taken(item.frame, item.audio, len(data))
                await link.ws.send(data)
            except ConnectionClosed:
                self._writable = False
            except Exception:
                log.exception("sending a %r frame failed", item.frame.get("type"))
            if item.audio is not None:
                self._stats.sent_bytes += len(item.audio)
                self._stats.sent_frames += 1

    # ------------------------------------------------------------------ shutdown

    async def _retire(self, link: _Link) -> None:
        link.retired = True
        if link.ws.state is not State.CLOSED:
            with contextlib.suppress(Exception):
                await link.ws.close(1000)
        task = link.recv_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _teardown_links(self) -> None:
        link = self._link
        self._link = None
        self._writable = False
        if link is not None:
            await self._retire(link)

    async def _shutdown(self, *, reason: str, code: int | None) -> None:
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        self._lifecycle.to(SessionState.CLOSING)
        self._writable = False
        self._live.set()  # release _wait_live waiters; they see the closing state
        self._cancel_recycle()
        current = asyncio.current_task()
        for task in (self._reconnect_task, self._writer_task):
            if task is not None and task is not current:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._reconnect_task = None
        self._writer_task = None
        await self._teardown_links()
        waiter = self._handshake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(NotConnectedError("the session was closed"))
        self._lifecycle.to(SessionState.CLOSED)
        self._on_closed()
        if not self._closed_emitted:
            self._closed_emitted = True
            self.emit("closed", ConnectionEvent(reason=reason, code=code))

    async def _wait_closed(self) -> None:
        while self.state is SessionState.CLOSING:
            pending = [t for t in self._tasks if not t.done() and t is not asyncio.current_task()]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def _dumps(frame: Frame) -> str:
    return orjson.dumps(frame).decode()


def _close_code(error: ProviderError) -> int | None:
    return int(error.code) if error.code.isdigit() else None
