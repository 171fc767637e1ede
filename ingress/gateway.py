"""The WebSocket gateway: voice sessions for callers that cannot talk to Redis.

``voicegrid gateway`` serves ``/v1/sessions`` on port 8080 (``VOICEGRID_GATEWAY_PORT``) and
``/metrics``, ``/healthz``, ``/readyz`` on ``VOICEGRID_METRICS_PORT`` (9464). Each caller
WebSocket drives one :class:`ingress.RedisRealtimeClient`: the gateway is a relay, every piece of
session state lives in Redis, so a caller whose socket dropped (or whose gateway restarted)
reconnects to any replica and attaches to its live session without losing or repeating an event.
The wire protocol is specified in ``docs/gateway.md``; in short:

- ``GET /v1/sessions`` (new session: first message ``session.start``) or
  ``GET /v1/sessions/{session_id}?after=<event_id>&skip=<frames>`` (attach);
  ``Authorization: Bearer <VOICEGRID_GATEWAY_TOKEN>`` when the token is set.
- Caller -> gateway: binary messages are audio in the session's input format; text messages are
  JSON commands (``session.start``, ``tool.response``, ``config.update``, ``response.request``,
  ``ping``, ``session.end``), each with an optional ``id`` echoed in its ``ack``/``error``/``pong``.
- Gateway -> caller: ``session.started`` / ``session.attached``; each session event as JSON with
  its ``event_id``; model audio as raw binary messages, announced by ``audio.meta`` when the
  response id or sample rate changes and followed by an ``audio.mark`` every
  :data:`MARK_EVERY_FRAMES` frames, so the caller always knows its resume position.

Bounded: a caller's outgoing queue holds at most ``outbound_budget_bytes``; a caller that does not
read beyond it is disconnected with close code 1008 (counted) and can attach again, losing
nothing. SIGTERM drains: no new connections, every caller gets close code 1012 ("service
restart") after what was queued for it, and sessions stay live for their next attach.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from arq.connections import ArqRedis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol import (
    AudioEvent,
    AudioFormatError,
    ConfigError,
    EntryTooLarge,
    InvalidSessionId,
    NotConnectedError,
    ProviderError,
    RealtimeToolResponse,
    RuntimeFailure,
    SessionTimeout,
    StreamEntryError,
    UnsupportedCapability,
    UsageError,
    VoicegridError,
    parse_config,
    parse_update,
)
from protocol.events import EVENT_NAMES
from protocol.keys import validate_session_id
from protocol.streams import decode_record, entry_id_key
from providers import check_options
from providers.transport import NoDebugLogger
from redisio.cluster import check_stores, open_stores
from redisio.connection import REDIS_ERRORS, RedisHealth
from redisio.http import HealthServer
from redisio.metrics import GATEWAY_CONNECTIONS, GATEWAY_FRAMES, GATEWAY_REJECTED

from .client import RedisRealtimeClient
from .media import MediaRouter
from .refusals import refuse
from .settings import GatewaySettings

__all__ = [
    "CLOSE_ATTACHED_ELSEWHERE",
    "CLOSE_SESSION_ENDED",
    "CLOSE_SESSION_NOT_FOUND",
    "CLOSE_TRY_AGAIN_LATER",
    "MARK_EVERY_FRAMES",
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_REQUESTS",
    "OUTBOUND_BUDGET_BYTES",
    "SESSIONS_PATH",
    "START_TIMEOUT_S",
    "BadRequest",
    "CallerMessage",
    "Gateway",
    "Rejected",
    "Route",
    "parse_caller_message",
    "parse_route",
    "run_gateway",
]

log = logging.getLogger("voicegrid.gateway")

#: The WebSocket endpoint: ``/v1/sessions`` (new session) or ``/v1/sessions/{id}`` (attach).
SESSIONS_PATH = "/v1/sessions"
#: Largest message a caller may send (websockets closes with 1009 beyond it).
MAX_MESSAGE_BYTES = 256 * 1024
#: Bytes queued for one caller at most; a caller that does not read beyond it is closed (1008).
#: It holds an attach's whole backlog: a full output stream (``OUTPUT_MAXLEN`` ~ 500 entries, about
#: 10 s of 24 kHz PCM16 in 20 ms frames) arrives in one read.
OUTBOUND_BUDGET_BYTES = 1024 * 1024
#: An ``audio.mark`` follows every this many consecutive audio frames (1 s of 20 ms frames).
MARK_EVERY_FRAMES = 50
#: Seconds a new socket (or one whose ``session.start`` failed) may wait before sending one.
START_TIMEOUT_S = 10.0
#: Awaited requests (``config.update``, ``ping``, ``session.end``) in flight per caller at most.
MAX_PENDING_REQUESTS = 16
#: Seconds spent flushing a caller's queue before a deliberate close (drain, session end).
FLUSH_TIMEOUT_S = 2.0
#: Seconds websockets waits for the caller's close frame before dropping the TCP connection.
CLOSE_TIMEOUT_S = 5.0
#: Keepalive ping interval (and pong timeout): how soon a vanished caller is noticed.
PING_INTERVAL_S = 20.0
#: Incoming frames websockets buffers per caller before it stops reading the socket.
INBOUND_QUEUE = 8
#: Largest ``skip`` an attach may ask for (it counts audio frames after ``after``).
MAX_SKIP = 1_000_000
#: Longest string ``id`` a caller message may carry (echoed in its reply).
MAX_ID_CHARS = 128

#: Close code: the session ended (``closed`` event or ``session.end``).
CLOSE_SESSION_ENDED = 1000
#: Close code: the session to attach to does not exist, has expired or has ended.
CLOSE_SESSION_NOT_FOUND = 4404
#: Close code: a newer connection attached to this session on this gateway.
CLOSE_ATTACHED_ELSEWHERE = 4409
#: Close code (RFC 6455 "try again later"): an attach failed for a reason other than the session.
CLOSE_TRY_AGAIN_LATER = 1013

_ERROR_TEXT_MAX = 500
# labelled children resolved once: the per-frame paths skip prometheus_client's label lookup
_FRAMES_IN = GATEWAY_FRAMES.labels("in")
_FRAMES_OUT = GATEWAY_FRAMES.labels("out")


# --- the caller's messages -----------------------------------------------------------------------


#: ``RedisRealtimeClient`` parameters a caller's provider ``options`` must not collide with.
_INGRESS_PARAMETERS = frozenset(
    {"redis_url", "provider", "model", "session_id", "namespace", "connect_timeout_s", "redis"}
)


class _CallerMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[StrictStr, Field(max_length=MAX_ID_CHARS)] | StrictInt | None = None


class SessionStart(_CallerMessage):
    type: Literal["session.start"]
    provider: Annotated[str, Field(min_length=1, max_length=64)]
    model: Annotated[str, Field(min_length=1, max_length=128)]
    config: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    session_id: str | None = None

    @field_validator("options")
    @classmethod
    def _own_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(_INGRESS_PARAMETERS & set(value))
        if taken:
            raise ValueError(
                f"{taken} are not provider options; set them as session.start fields or leave "
                "them to the gateway"
            )
        return value


class ToolResponse(_CallerMessage):
    type: Literal["tool.response"]
    responses: Annotated[list[RealtimeToolResponse], Field(min_length=1)]


class ConfigUpdate(_CallerMessage):
    type: Literal["config.update"]
    config: dict[str, Any]


class ResponseRequest(_CallerMessage):
    type: Literal["response.request"]
    instruction: str | None = None


class Ping(_CallerMessage):
    type: Literal["ping"]


class SessionEnd(_CallerMessage):
    type: Literal["session.end"]


CallerMessage = SessionStart | ToolResponse | ConfigUpdate | ResponseRequest | Ping | SessionEnd

_MESSAGE_MODELS: dict[str, type[_CallerMessage]] = {
    "session.start": SessionStart,
    "tool.response": ToolResponse,
    "config.update": ConfigUpdate,
    "response.request": ResponseRequest,
    "ping": Ping,
    "session.end": SessionEnd,
}


class Rejected(UsageError):
    """A caller message the gateway refuses: answered with an ``error`` message, never raised
    out of the gateway. ``code`` is the ``error`` message's code, ``message_id`` the ``id`` of
    the refused message when it had a usable one."""

    def __init__(self, code: str, message: str, message_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message_id = message_id


def parse_caller_message(text: str | bytes) -> CallerMessage:
    """Validate one text message from a caller; raise :class:`Rejected` naming the problem."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Rejected("invalid_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise Rejected(
            "invalid_message",
            f"message must be a JSON object with a 'type', got a JSON {type(raw).__name__}",
        )
    raw_id = raw.get("id")
    # echoed in the reply only when valid (at most 128 characters, or an integer): a refusal
    # never sends a caller's 10 KB id back
    message_id = (
        raw_id
        if (isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS)
        or (isinstance(raw_id, int) and not isinstance(raw_id, bool))
        else None
    )
    kind = raw.get("type")
    model = _MESSAGE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise Rejected(
            "unknown_type",
            f"message type {kind!r} is unknown; expected one of {sorted(_MESSAGE_MODELS)}",
            message_id,
        )
    try:
        message = model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or kind}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise Rejected(
            "invalid_message", f"invalid {kind} message: {problems}", message_id
        ) from None
    assert isinstance(message, CallerMessage)
    return message


# --- the request path ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    """What a caller asked for in its upgrade request: a new session (``session_id`` None) or to
    attach to ``session_id`` after event ``after``, skipping ``skip`` audio frames it has."""

    session_id: str | None = None
    after: str | None = None
    skip: int = 0


class BadRequest(UsageError):
    """An upgrade request the gateway refuses with HTTP ``status`` (400 or 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_route(path: str) -> Route:
    """Parse ``/v1/sessions[/{session_id}][?after=<event_id>&skip=<frames>]``; raise
    :class:`BadRequest` naming the problem."""
    parts = urlsplit(path)
    route = parts.path.rstrip("/")
    tail = route[len(SESSIONS_PATH) + 1 :]
    if route == SESSIONS_PATH:
        session_id = None
    elif route.startswith(SESSIONS_PATH + "/") and "/" not in tail:
        try:
            session_id = validate_session_id(tail)
        except InvalidSessionId as exc:
            raise BadRequest(400, str(exc)) from None
    else:
        raise BadRequest(
            404, f"no endpoint {parts.path!r}; expected {SESSIONS_PATH} or {SESSIONS_PATH}/<id>"
        )
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise BadRequest(400, f"query {_clip(parts.query)} is malformed") from None
    unknown = sorted(set(query) - {"after", "skip"})
    if unknown or (session_id is None and query):
        allowed = "after and skip when attaching" if session_id else "none for a new session"
        names = _clip(", ".join(sorted(query)))
        raise BadRequest(400, f"unexpected query parameters {names}; allowed: {allowed}")
    if any(len(values) > 1 for values in query.values()):
        raise BadRequest(400, "each query parameter may appear once")
    after = query.get("after", [None])[0]
    if after is not None:
        try:
            entry_id_key(after)
        except StreamEntryError:
            raise BadRequest(
                400,
                f"after={_clip(after)} is not an event id; expected '<ms>-<seq>' as in event_id "
                "(ASCII digits, each part at most 2**64-1)",
            ) from None
    raw_skip = query.get("skip", ["0"])[0]
    # ASCII digits only: str.isdigit also accepts e.g. '\u00b2', which int() then refuses
    if not (raw_skip.isascii() and raw_skip.isdigit()) or int(raw_skip) > MAX_SKIP:
        raise BadRequest(
            400, f"skip={_clip(raw_skip)}; expected a whole number of audio frames (0..{MAX_SKIP})"
        )
    skip = int(raw_skip)
    if skip and after is None:
        raise BadRequest(400, "skip needs after: it counts audio frames after that event")
    return Route(session_id=session_id, after=after, skip=skip)


def _clip(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to ``limit`` characters: a refusal never echoes a caller's megabyte."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# --- one caller ----------------------------------------------------------------------------------


class _Phase(enum.Enum):
    AWAITING_START = "awaiting-start"  # new socket: only session.start is valid
    STARTING = "starting"  # connecting or attaching: session events are held back
    LIVE = "live"
    ENDED = "ended"  # the session closed; the socket closes after the queue


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, Rejected | ProviderError):
        return exc.code
    for cls, code in (
        (UnsupportedCapability, "unsupported"),
        (AudioFormatError, "invalid_audio"),
        (EntryTooLarge, "too_large"),
        (InvalidSessionId, "invalid_session_id"),
        (ConfigError, "invalid_config"),
        (NotConnectedError, "not_connected"),
        (SessionTimeout, "timeout"),
        (UsageError, "invalid_request"),
        (RuntimeFailure, "runtime_failure"),
    ):
        if isinstance(exc, cls):
            return code
    return "error"


def _error_text(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ProviderError) else str(exc)
    text = text or type(exc).__name__
    return text if len(text) <= _ERROR_TEXT_MAX else text[: _ERROR_TEXT_MAX - 3] + "..."


class CallerConnection:
    """One caller WebSocket and the session it drives (see the module docstring)."""

    def __init__(self, gateway: Gateway, ws: ServerConnection, route: Route) -> None:
        self.gateway = gateway
        self.ws = ws
        self.route = route
        self.client: RedisRealtimeClient | None = None
        self.phase = _Phase.AWAITING_START
        self._outbox: deque[tuple[bytes, bool]] = deque()
        self._outbox_bytes = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._overflowed = False
        self._requests: set[asyncio.Task[None]] = set()
        self._held: list[tuple[str, Any, str | None]] = []
        # the resume position: the last stream event seen, audio frames to skip after it, and
        # audio frames delivered since the last message that carried an event_id
        self._last_id: str | None = route.after
        self._skip = route.skip
        self._unmarked = route.skip
        self._audio_meta: tuple[str | None, int] | None = None
        self.done = asyncio.Event()

    @property
    def session_id(self) -> str | None:
        return self.client.session_id if self.client is not None else self.route.session_id

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the caller until the socket closes, the session ends or the gateway drains."""
        sender = asyncio.create_task(self._send_loop(), name="voicegrid-gateway-send")
        receiver = asyncio.create_task(self._receive_loop(), name="voicegrid-gateway-recv")
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({receiver, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done() and not receiver.cancelled() and receiver.exception() is not None:
                log.error(
                    "session %s: caller connection failed",
                    self.session_id,
                    exc_info=receiver.exception(),
                )
                self.request_close(1011, "internal error")
        finally:
            stopped.cancel()
            receiver.cancel()
            await asyncio.gather(receiver, stopped, return_exceptions=True)
            await self._finish(sender)

    async def _finish(self, sender: asyncio.Task[None]) -> None:
        try:
            if self._requests:
                # replies of requests in flight (e.g. the ack of session.end) go out first
                await asyncio.wait(set(self._requests), timeout=FLUSH_TIMEOUT_S)
            if self._close is not None:
                code, reason = self._close
                if code != 1008:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FLUSH_TIMEOUT_S):
                            while self._outbox or not self._idle.is_set():
                                await self._idle.wait()
                sender.cancel()
                await self.ws.close(code, reason)
        finally:
            sender.cancel()
            for task in self._requests:
                task.cancel()
            await asyncio.gather(sender, *self._requests, return_exceptions=True)
            if self.client is not None and self.phase is not _Phase.ENDED:
                # the caller left (or the gateway drains): the session lives on for an attach
                await self.client.detach()
            self.done.set()

    def request_close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` after the queued messages (1008: without them)."""
        if self._close is None:
            self._close = (code, reason)
            self._stop.set()

    async def shutdown(self, code: int, reason: str) -> None:
        """Close with ``code`` and wait until the session is detached."""
        self.request_close(code, reason)
        await self.done.wait()

    # --- caller -> gateway ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        try:
            if self.route.session_id is not None and not await self._attach(self.route.session_id):
                return
            # one budget for the whole socket, not per message: a caller that keeps sending
            # anything but a successful session.start (pings, say) is still closed in time.
            # Only the time spent waiting for the caller counts (a session.start that then
            # fails may have waited for a worker far longer)
            budget = self.gateway.start_timeout_s
            while True:
                if self.phase is _Phase.AWAITING_START:
                    waited = time.monotonic()
                    try:
                        async with asyncio.timeout(max(0.0, budget)):
                            message = await self.ws.recv()
                    except TimeoutError:
                        GATEWAY_REJECTED.labels("start_timeout").inc()
                        self.request_close(
                            1008, f"no session.start within {self.gateway.start_timeout_s:g}s"
                        )
                        return
                    budget -= time.monotonic() - waited
                else:
                    message = await self.ws.recv()
                if isinstance(message, bytes):
                    self._on_audio(message)
                else:
                    await self._on_text(message)
        except ConnectionClosed:
            return

    def _on_audio(self, frame: bytes) -> None:
        client = self.client
        if self.phase is not _Phase.LIVE or client is None or client.config is None:
            GATEWAY_REJECTED.labels("invalid_audio").inc()
            self._reply_error(None, self._not_live("audio"))
            return
        problem: Rejected | None = None
        if not frame:
            problem = Rejected("invalid_audio", "empty audio frame; send at least one sample")
        else:
            try:
                client.send_audio(frame)  # the size limit is the client's (VOICEGRID_MAX_*)
            except EntryTooLarge as exc:
                problem = Rejected("audio_frame_too_large", _error_text(exc))
            except VoicegridError as exc:
                problem = Rejected(_error_code(exc), _error_text(exc))
        if problem is not None:
            GATEWAY_REJECTED.labels("invalid_audio").inc()
            self._reply_error(None, problem)
            return
        _FRAMES_IN.inc()

    def _not_live(self, what: str) -> Rejected:
        if self.phase is _Phase.ENDED:
            return Rejected("not_connected", f"{what} after the session ended is dropped")
        return Rejected("not_started", f"{what} before session.started is dropped")

    async def _on_text(self, text: str) -> None:
        try:
            message = parse_caller_message(text)
        except Rejected as exc:
            GATEWAY_REJECTED.labels("invalid_message").inc()
            self._reply_error(exc.message_id, exc)
            return
        if isinstance(message, SessionStart):
            if self.phase is _Phase.AWAITING_START:
                await self._start(message)
            else:
                GATEWAY_REJECTED.labels("invalid_message").inc()
                self._reply_error(
                    message.id,
                    Rejected("already_started", "this socket already carries a session"),
                )
            return
        client = self.client
        if self.phase is not _Phase.LIVE or client is None:
            GATEWAY_REJECTED.labels("invalid_message").inc()
            self._reply_error(message.id, self._not_live(message.type))
            return
        try:
            if isinstance(message, ToolResponse):
                client.send_tool_response(list(message.responses))
                self._ack(message)
            elif isinstance(message, ResponseRequest):
                client.request_response(message.instruction)
                self._ack(message)
            elif isinstance(message, ConfigUpdate):
                update = parse_update(message.config)
                await self._spawn(message, client.update_config(update))
            elif isinstance(message, Ping):
                await self._spawn(message, client.ping())
            elif isinstance(message, SessionEnd):
                await self._spawn(message, client.disconnect())
        except VoicegridError as exc:
            self._reply_error(message.id, exc)

    async def _spawn(self, message: CallerMessage, awaitable: Awaitable[Any]) -> None:
        """Run a request whose answer is awaited, without stalling the caller's audio."""
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            GATEWAY_REJECTED.labels("too_many_requests").inc()
            self._reply_error(
                message.id,
                Rejected(
                    "too_many_requests",
                    f"{MAX_PENDING_REQUESTS} requests are already awaiting their answer; wait "
                    "for an ack before sending more",
                ),
            )
            return
        task = asyncio.create_task(self._answer(message, awaitable))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        # let the request queue its command before the next caller message is handled, so the
        # session sees audio and commands in the order the caller sent them
        await asyncio.sleep(0)

    async def _answer(self, message: CallerMessage, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except VoicegridError as exc:
            self._reply_error(message.id, exc)
            return
        if isinstance(message, Ping):
            body: dict[str, Any] = {"type": "pong", "alive": bool(result)}
            if message.id is not None:
                body["id"] = message.id
            self._put_json(body)
        else:
            self._ack(message)
        if isinstance(message, SessionEnd):
            self._end()

    async def _start(self, message: SessionStart) -> None:
        gateway = self.gateway
        try:
            config = parse_config(message.config)
            check_options(
                message.provider, message.options, allowed=gateway.settings.caller_options
            )
            client = RedisRealtimeClient(
                gateway.settings.redis_url,
                provider=message.provider,
                model=message.model,
                session_id=message.session_id,
                namespace=gateway.settings.namespace,
                stores=gateway.stores,
                connect_timeout_s=gateway.connect_timeout_s,
                **message.options,
            )
        except VoicegridError as exc:
            self._reply_error(message.id, exc)
            return
        self._subscribe(client)
        self.client = client
        self.phase = _Phase.STARTING
        try:
            await client.connect(config)
        except VoicegridError as exc:
            log.info("session.start failed: %s", _error_code(exc))
            self.client = None
            self._held.clear()
            self._last_id = None
            self.phase = _Phase.AWAITING_START
            self._reply_error(message.id, exc)
            return
        session_id = client.session_id
        assert session_id is not None
        gateway.register(session_id, self)
        log.info("session %s started (%s %s)", session_id, message.provider, message.model)
        self._opened("session.started", message.id)

    async def _attach(self, session_id: str) -> bool:
        gateway = self.gateway
        self.phase = _Phase.STARTING
        await gateway.supersede(session_id, self)
        try:
            provider, model = await gateway.session_identity(session_id)
            client = RedisRealtimeClient(
                gateway.settings.redis_url,
                provider=provider,
                model=model,
                namespace=gateway.settings.namespace,
                stores=gateway.stores,
            )
            self._subscribe(client)
            self.client = client
            await client.attach(session_id, after=self.route.after)
        except VoicegridError as exc:
            self.client = None
            self._reply_error(None, exc, recoverable=False)
            self.phase = _Phase.ENDED
            if isinstance(exc, NotConnectedError):
                GATEWAY_REJECTED.labels("not_found").inc()
                self.request_close(CLOSE_SESSION_NOT_FOUND, "session not found or ended")
            else:  # Redis unreachable, a malformed session record: worth another try later
                self.request_close(CLOSE_TRY_AGAIN_LATER, "attach failed; retry")
            return False
        gateway.register(session_id, self)
        log.info("session %s attached after %s", session_id, self.route.after)
        self._opened("session.attached", None)
        return True

    def _opened(self, kind: str, message_id: str | int | None) -> None:
        """Announce the session, then release the events held while it was starting."""
        client = self.client
        assert client is not None and client.config is not None
        body: dict[str, Any] = {
            "type": kind,
            "session_id": client.session_id,
            "provider": client.provider,
            "model": client.model,
            "capabilities": client.capabilities.model_dump(mode="json"),
            "input_audio": client.config.input_audio.model_dump(mode="json"),
            "output_audio": client.config.output_audio.model_dump(mode="json"),
        }
        if message_id is not None:
            body["id"] = message_id
        if kind == "session.attached":
            body["after"] = self.route.after
            body["skip"] = self.route.skip
        self._put_json(body)
        self.phase = _Phase.LIVE
        held, self._held = self._held, []
        for name, payload, event_id in held:
            self._relay(name, payload, event_id)

    # --- session -> caller ---------------------------------------------------------------------

    def _subscribe(self, client: RedisRealtimeClient) -> None:
        for name in sorted(EVENT_NAMES):
            client.on(name, self._handler(name))  # type: ignore[arg-type]

    def _handler(self, name: str) -> Callable[[Any], None]:
        def handle(payload: Any) -> None:
            self._on_event(name, payload)

        return handle

    def _on_event(self, name: str, payload: Any) -> None:
        client = self.client
        if client is None:
            return
        # An event read from the output stream carries a new entry id; one the client emits by
        # itself (e.g. its own buffer overflow) leaves last_event_id unchanged and gets none.
        event_id = client.last_event_id
        if event_id is None or event_id == self._last_id:
            event_id = None
        else:
            self._last_id = event_id
        if self.phase is _Phase.STARTING:
            self._held.append((name, payload, event_id))
        elif self.phase is _Phase.LIVE:
            self._relay(name, payload, event_id)

    def _relay(self, name: str, payload: Any, event_id: str | None) -> None:
        if isinstance(payload, AudioEvent):
            if self._skip > 0 and event_id is not None:
                self._skip -= 1  # the caller had this frame before it reconnected
                return
            meta = (payload.response_id, payload.sample_rate)
            if meta != self._audio_meta:
                self._audio_meta = meta
                self._put_json(
                    {
                        "type": "audio.meta",
                        "response_id": payload.response_id,
                        "sample_rate": payload.sample_rate,
                    }
                )
            self._put(payload.data, text=False)
            if event_id is not None:
                self._unmarked += 1
                if self._unmarked >= MARK_EVERY_FRAMES:
                    self._put_json({"type": "audio.mark", "event_id": event_id})
                    self._unmarked = 0
            return
        self._skip = 0
        body: dict[str, Any] = {"type": name}
        if event_id is not None:
            body["event_id"] = event_id
            self._unmarked = 0
        body.update(payload.model_dump(mode="json"))
        self._put_json(body)
        if name == "closed":
            self._end()

    def _end(self) -> None:
        """The session is over: close the socket (1000) once the queue is sent."""
        self.phase = _Phase.ENDED
        self.request_close(CLOSE_SESSION_ENDED, "session ended")

    def _ack(self, message: CallerMessage) -> None:
        if message.id is not None:
            self._put_json({"type": "ack", "id": message.id, "command": message.type})

    def _reply_error(
        self, message_id: str | int | None, exc: BaseException, *, recoverable: bool = True
    ) -> None:
        body: dict[str, Any] = {
            "type": "error",
            "code": _error_code(exc),
            "message": _error_text(exc),
            "recoverable": recoverable,
        }
        if message_id is not None:
            body["id"] = message_id
        self._put_json(body)

    def _put_json(self, body: dict[str, Any]) -> None:
        self._put(orjson.dumps(body), text=True)

    def _put(self, data: bytes, *, text: bool) -> None:
        if self._overflowed:
            return
        if self._outbox_bytes + len(data) > self.gateway.outbound_budget_bytes:
            self._overflowed = True
            GATEWAY_REJECTED.labels("slow_consumer").inc()
            log.warning(
                "session %s: caller is not reading (%d bytes queued); closing with 1008",
                self.session_id,
                self._outbox_bytes,
            )
            self.request_close(1008, "caller is not reading; reconnect and attach")
            return
        self._outbox.append((data, text))
        self._outbox_bytes += len(data)
        self._idle.clear()
        self._wakeup.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                while not self._outbox:
                    self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                data, text = self._outbox.popleft()
                self._outbox_bytes -= len(data)
                await self.ws.send(data, text=text)
                if not text:
                    _FRAMES_OUT.inc()
        except ConnectionClosed:
            self._stop.set()


# --- the server ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Capacity:
    max_sessions: int


class _Probe:
    """The gateway as ``redisio.http.HealthServer`` reads it: ``sessions`` are the connections."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._capacity = _Capacity(gateway.max_connections)

    @property
    def loop_tick(self) -> float:
        return self._gateway.loop_tick

    @property
    def draining(self) -> bool:
        return self._gateway.draining

    @property
    def overloaded(self) -> bool:
        return False  # the gateway has no load-aware admission (its limit is max_connections)

    @property
    def health(self) -> RedisHealth:
        return self._gateway.health

    @property
    def sessions(self) -> set[CallerConnection]:
        return self._gateway.connections

    @property
    def settings(self) -> _Capacity:
        return self._capacity


# websockets logs every request header at DEBUG (the bearer token included): never let it
_ws_log = NoDebugLogger(logging.getLogger("voicegrid.gateway.websockets"), {})


class Gateway:
    """The gateway server: caller WebSockets on ``port``, probes and metrics on
    ``settings.metrics_port`` (see the module docstring).

    ``redis`` injects a client (tests: fakeredis); ``port`` overrides
    ``settings.gateway_port`` (0 picks a free port, stored in ``port`` after :meth:`start`).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        redis: ArqRedis | None = None,
        outbound_budget_bytes: int = OUTBOUND_BUDGET_BYTES,
        start_timeout_s: float = START_TIMEOUT_S,
        connect_timeout_s: float = 30.0,
    ) -> None:
        if outbound_budget_bytes <= 0:
            raise ConfigError(
                f"outbound_budget_bytes must be positive, got {outbound_budget_bytes}"
            )
        self.settings = settings
        self.host = host
        self.port = settings.gateway_port if port is None else port
        self.max_connections = settings.gateway_max_connections
        self.outbound_budget_bytes = outbound_budget_bytes
        self.start_timeout_s = start_timeout_s
        self.connect_timeout_s = connect_timeout_s
        # the session keys' Redis (a cluster, or the one Redis) and the queue's (redisio.cluster)
        self.stores = open_stores(settings, redis)
        self.keys = self.stores.keys
        self.redis = self.stores.sessions
        self._own_redis = redis is None
        self._token = settings.gateway_token.encode()
        self.health = RedisHealth()
        self.draining = False
        self.loop_tick = time.monotonic()
        self.connections: set[CallerConnection] = set()
        self._by_session: dict[str, CallerConnection] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self.media = MediaRouter(self)  # phone/browser legs, media tokens, the page (ingress/media)
        self._server: Server | None = None
        self.http: HealthServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for callers and serve the probes (a URL that names the wrong kind of Redis
        raises ``ConfigError``)."""
        if self._own_redis:
            with contextlib.suppress(*REDIS_ERRORS):  # unreachable now: /readyz reports it
                await check_stores(self.stores, self.settings)
        self._server = await serve(
            self._serve,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # audio does not compress; deflate would cost CPU per message
            max_size=MAX_MESSAGE_BYTES,
            max_queue=INBOUND_QUEUE,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_INTERVAL_S,
            close_timeout=CLOSE_TIMEOUT_S,
            logger=_ws_log,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="voicegrid-gateway-heartbeat"),
            asyncio.create_task(self._probe_redis(), name="voicegrid-gateway-redis-probe"),
        ]
        self.http = HealthServer(_Probe(self), port=self.settings.metrics_port)
        await self.http.start()
        GATEWAY_CONNECTIONS.set(0)
        log.info(
            "gateway ready: ws port=%d redis=%s namespace=%s auth=%s metrics port=%d",
            self.port,
            self.settings.redis_url_redacted,
            self.settings.namespace,
            "bearer" if self._token else "none",
            self.http.port,
        )

    async def drain(self) -> None:
        """Refuse new callers; close every socket with 1012 after its queue; sessions stay live.

        Bounded by ``settings.drain_timeout_s``; sockets still open then are dropped.
        """
        self.draining = True
        if self._server is not None:
            self._server.close(close_connections=False)
        connections = list(self.connections)
        if connections:
            log.info("draining: closing %d caller sockets with 1012", len(connections))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await asyncio.gather(
                    *(c.shutdown(1012, "service restart") for c in connections),
                    self.media.drain(),
                    return_exceptions=True,
                )
                if self._server is not None:
                    await self._server.wait_closed()

    async def close(self) -> None:
        """Stop everything (after :meth:`drain`, or instead of it) and close the Redis client."""
        self.draining = True
        if self._server is not None:
            self._server.close(close_connections=False)
        for caller in self.connections:
            caller.ws.transport.abort()  # only sockets a drain did not close get here
        for task in [*self._handlers, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._handlers, *self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_TIMEOUT_S)
        if self.http is not None:
            await self.http.stop()
        if self._own_redis:
            await self.stores.aclose()

    # --- connections ---------------------------------------------------------------------------

    def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response | None] | None:
        """Refuse an upgrade before it happens: unauthorised, a bad path, draining or full (in
        that order: nothing about the gateway's state is told to a caller without the token,
        and a request that can never succeed is not told to retry). Media legs carry their own
        token and are checked by the media router."""
        if self.media.handles(request.path):
            return self.media.process_request(connection, request)
        if self._token and not self._authorized(request.headers.get("Authorization")):
            response = refuse(connection, 401, "unauthorized", "send Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="voicegrid"'
            return response
        try:
            parse_route(request.path)
        except BadRequest as exc:
            reason = "not_found" if exc.status == 404 else "bad_request"
            return refuse(connection, exc.status, reason, str(exc))
        if self.draining:
            return refuse(connection, 503, "draining", "gateway is restarting; retry")
        if len(self.connections) >= self.max_connections:
            return refuse(connection, 503, "full", "gateway is full; retry")
        return None

    def _authorized(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token
        )

    async def _serve(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        assert ws.request is not None  # the handshake is done; process_request checked the path
        if self.media.handles(ws.request.path):
            try:
                await self.media.serve(ws)
            finally:
                self._handlers.discard(task)
            return
        caller = CallerConnection(self, ws, parse_route(ws.request.path))
        self.connections.add(caller)
        GATEWAY_CONNECTIONS.set(len(self.connections))
        try:
            await caller.run()
        finally:
            self.connections.discard(caller)
            sid = caller.session_id
            if sid is not None and self._by_session.get(sid) is caller:
                del self._by_session[sid]
            GATEWAY_CONNECTIONS.set(len(self.connections))
            self._handlers.discard(task)

    def register(self, session_id: str, caller: CallerConnection) -> None:
        self._by_session[session_id] = caller

    async def supersede(self, session_id: str, caller: CallerConnection) -> None:
        """A newer connection attaches to ``session_id``: close this gateway's older one first
        (its socket is likely half-dead), so one process never follows a session twice."""
        old = self._by_session.get(session_id)
        if old is not None and old is not caller:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT_S + CLOSE_TIMEOUT_S):
                    await old.shutdown(CLOSE_ATTACHED_ELSEWHERE, "attached by a newer connection")

    async def session_identity(self, session_id: str) -> tuple[str, str]:
        """(provider, model) of a session, from its record; ``NotConnectedError`` if unknown."""
        try:
            raw = await self.redis.hgetall(self.keys.session(session_id).state)  # type: ignore[misc]
        except REDIS_ERRORS as exc:
            raise RuntimeFailure(
                f"Redis at {self.settings.redis_url_redacted} is unreachable: {type(exc).__name__}"
            ) from exc
        if not raw:
            raise NotConnectedError(f"session {session_id!r} does not exist (or has expired)")
        record = decode_record(raw)
        return record.provider, record.model

    # --- background ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            self.loop_tick = time.monotonic()
            await asyncio.sleep(0.25)

    async def _probe_redis(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.stores.queue.ping(), 2.0)
                if self.stores.cluster is not None:
                    # every primary answers (the cluster client's sockets time out on their own)
                    await self.stores.cluster.ping(target_nodes=RedisCluster.PRIMARIES)
            except TimeoutError as exc:
                self.health.failed(exc)
            except REDIS_ERRORS as exc:
                self.health.failed(exc)
            else:
                self.health.ok()
            await asyncio.sleep(1.0)


async def run_gateway(
    settings: GatewaySettings,
    *,
    stop_event: asyncio.Event,
    host: str = "0.0.0.0",
    port: int | None = None,
    redis: ArqRedis | None = None,
    started: asyncio.Future[Gateway] | None = None,
) -> None:
    """Run a gateway in this event loop until ``stop_event`` is set, then drain and return.

    ``started`` is resolved with the :class:`Gateway` once it accepts callers.
    """
    gateway = Gateway(settings, host=host, port=port, redis=redis)
    try:
        await gateway.start()
        if started is not None and not started.done():
            started.set_result(gateway)
        await stop_event.wait()
        await gateway.drain()
    finally:
        await gateway.close()
