"""The ``RealtimeAudioClient`` interface, its event emitter, lifecycle states and send buffer.

Every provider client and ``ingress.RedisRealtimeClient`` implement this interface, so application
code is the same in-process and distributed.

Handler semantics (pinned by tests):

- ``on(name, handler)`` takes a plain function or a coroutine function of one argument (the
  event's payload model). Plain handlers run inline, in emission order. Coroutine handlers run on
  one dispatcher task per client, one at a time, in emission order, so a slow async handler never
  stalls the receive loop and never sees events out of order.
- A handler that raises is logged (with the event name) and isolated: other handlers and the
  client go on.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from .config import (
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
)
from .errors import ConfigError, UnsupportedCapability, UsageError
from .events import EVENT_MODELS, EVENT_NAMES, EventName

__all__ = [
    "AudioSendBuffer",
    "EventEmitter",
    "Handler",
    "RealtimeAudioClient",
    "SessionState",
    "StateMachine",
]

log = logging.getLogger("voicegrid.client")

Handler = Callable[[Any], Awaitable[None] | None]


class EventEmitter:
    """Named events with sync and async handlers; see the module docstring for the semantics."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._async_queue: asyncio.Queue[tuple[str, Handler, Any]] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._state_version = 0

    def on(self, event: EventName, handler: Handler) -> None:
        """Register ``handler`` for ``event``; registering the same handler twice is a no-op."""
        self._check_name(event)
        if not callable(handler):
            raise ConfigError(f"handler for {event!r} must be callable, got {handler!r}")
        handlers = self._handlers.setdefault(event, [])
        if handler not in handlers:
            handlers.append(handler)

    def off(self, event: EventName, handler: Handler) -> None:
        """Remove ``handler`` from ``event``; removing an unknown handler is a no-op."""
        self._check_name(event)
        handlers = self._handlers.get(event, [])
        if handler in handlers:
            handlers.remove(handler)

    def has_handlers(self, event: str) -> bool:
        return bool(self._handlers.get(event))

    @staticmethod
    def _check_name(event: str) -> None:
        if event not in EVENT_NAMES:
            raise ConfigError(f"unknown event {event!r}; expected one of {sorted(EVENT_NAMES)}")

    def emit(self, event: str, payload: BaseModel) -> None:
        """Deliver ``payload`` to the handlers of ``event``; never raises because of a handler."""
        expected = EVENT_MODELS.get(event)
        if expected is None or not isinstance(payload, expected):
            raise UsageError(
                f"event {event!r} needs a {expected.__name__ if expected else '?'} payload, got "
                f"{type(payload).__name__}"
            )
        if event != "audio" and (event != "transcript" or getattr(payload, "final", True)):
            # every event but audio and partial transcripts can change what export_state says
            self._state_version += 1
        for handler in tuple(self._handlers.get(event, ())):
            if inspect.iscoroutinefunction(handler):
                self._enqueue_async(event, handler, payload)
                continue
            try:
                result = handler(payload)
            except Exception:
                log.exception("handler %r for event %r raised; ignored", handler, event)
                continue
            if inspect.isawaitable(result):  # a callable object returning a coroutine
                self._enqueue_async(event, _Resolved(result), payload)

    def _enqueue_async(self, event: str, handler: Handler, payload: Any) -> None:
        if self._async_queue is None:
            self._async_queue = asyncio.Queue()
        self._async_queue.put_nowait((event, handler, payload))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name="voicegrid-event-dispatch"
            )

    async def _dispatch(self) -> None:
        queue = self._async_queue
        assert queue is not None
        while not queue.empty():
            event, handler, payload = queue.get_nowait()
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("async handler %r for event %r raised; ignored", handler, event)

    async def wait_handlers(self) -> None:
        """Wait until every async handler queued so far has run."""
        while self._dispatcher is not None and not self._dispatcher.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._dispatcher)


class _Resolved:
    """Wrap an awaitable a sync-looking handler returned, so the dispatcher awaits it in order."""

    def __init__(self, awaitable: Awaitable[None]) -> None:
        self._awaitable = awaitable

    def __call__(self, _payload: Any) -> Awaitable[None]:
        return self._awaitable


class SessionState(enum.Enum):
    """A session's lifecycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.IDLE: frozenset({SessionState.CONNECTING, SessionState.CLOSED}),
    SessionState.CONNECTING: frozenset(
        {SessionState.LIVE, SessionState.CLOSING, SessionState.CLOSED, SessionState.IDLE}
    ),
    SessionState.LIVE: frozenset(
        {SessionState.RECONNECTING, SessionState.CLOSING, SessionState.CLOSED}
    ),
    SessionState.RECONNECTING: frozenset(
        {SessionState.LIVE, SessionState.CLOSING, SessionState.CLOSED}
    ),
    SessionState.CLOSING: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


class StateMachine:
    """The session lifecycle as a transition table; an illegal transition is a local bug."""

    def __init__(self) -> None:
        self.state = SessionState.IDLE

    def to(self, new: SessionState) -> None:
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise UsageError(f"illegal session transition {self.state.value} -> {new.value}")
        self.state = new

    @property
    def open(self) -> bool:
        return self.state in (SessionState.LIVE, SessionState.RECONNECTING)


class AudioSendBuffer:
    """Bounded FIFO of outgoing audio frames with a drop-oldest policy.

    ``push`` never blocks; when the buffer would exceed ``max_bytes`` the oldest frames are
    dropped and counted in ``dropped_frames`` / ``dropped_bytes``.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"audio buffer size must be positive, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._frames: deque[bytes] = deque()
        self.size = 0
        self.dropped_frames = 0
        self.dropped_bytes = 0

    def push(self, frame: bytes) -> int:
        """Append ``frame``; return how many frames were dropped to make room."""
        dropped = 0
        self._frames.append(frame)
        self.size += len(frame)
        while self.size > self.max_bytes and len(self._frames) > 1:
            old = self._frames.popleft()
            self.size -= len(old)
            dropped += 1
            self.dropped_bytes += len(old)
        self.dropped_frames += dropped
        return dropped

    def pop(self) -> bytes | None:
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self.size -= len(frame)
        return frame

    def unpop(self, frame: bytes) -> None:
        """Put a frame that could not be sent back at the head (it keeps its place)."""
        self._frames.appendleft(frame)
        self.size += len(frame)

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()
        self.size = 0


class RealtimeAudioClient(EventEmitter, abc.ABC):
    """One realtime voice session with a speech-to-speech model (``docs/architecture.md``).

    ``connected`` is true from the moment ``connect`` (or ``attach``) resolves until the session
    ends (``closed``), including while the client reconnects transparently.
    """

    capabilities: ClassVar[RealtimeCapabilities] = RealtimeCapabilities()
    provider: ClassVar[str] = ""

    def __init__(self, *, model: str) -> None:
        super().__init__()
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model must be a non-empty string, got {model!r}")
        self.model = model
        self._lifecycle = StateMachine()

    @property
    def state(self) -> SessionState:
        return self._lifecycle.state

    @property
    def connected(self) -> bool:
        return self._lifecycle.open

    @abc.abstractmethod
    async def connect(self, config: RealtimeSessionConfig) -> None:
        """Open the session with ``config``; resolves once the provider accepted it."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """End the session gracefully; idempotent; emits ``closed`` once."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the live connection answers."""

    @abc.abstractmethod
    def send_audio(self, frame: bytes) -> None:
        """Queue a frame in the session's input format; never blocks; bounded buffer."""

    @abc.abstractmethod
    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        """Return tool results to the model."""

    @abc.abstractmethod
    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        """Change the session config mid-call; emits ``config-updated`` with the strategy used."""

    def export_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot another client needs to continue this session.

        The distributed runtime saves it in Redis (at turn ends and about once a second) and
        hands it to :meth:`import_state` of the client that takes the session over in another
        process, e.g. the latest Gemini resumption handle or the conversation items to replay.
        The default exports nothing.
        """
        return {}

    @property
    def state_version(self) -> int:
        """A number that changes whenever :meth:`export_state` may return something new.

        A caller that saved the export taken at version ``v`` need not call
        :meth:`export_state` again while this is still ``v`` (the distributed runtime
        checkpoints ten times a second at no cost this way). Every emitted event except
        ``audio`` and partial transcripts changes it; a client whose exported state also
        changes without an event (a Gemini resumption handle, a tool result sent) calls
        :meth:`_state_changed`.
        """
        return self._state_version

    def _state_changed(self) -> None:
        """Mark the exported state as changed (see :attr:`state_version`)."""
        self._state_version += 1

    def import_state(self, state: dict[str, Any]) -> Literal["resumed", "replayed"] | None:
        """Prepare an unconnected client to continue a session exported by :meth:`export_state`.

        Called before :meth:`connect`. Returns the strategy the following ``connect`` will use
        to restore the session (``"resumed"``: provider-side resumption, e.g. a Gemini handle;
        ``"replayed"``: the client re-sends the conversation itself), or ``None`` when it cannot
        use ``state`` (the runtime then replays the conversation summary it keeps). The default
        returns ``None``.
        """
        return None

    def report_playback(self, response_id: str | None, played_ms: int) -> None:
        """The caller's player has played ``played_ms`` of response ``response_id`` (e.g. what a
        phone confirmed through Twilio marks). A client that truncates the model's reply on
        barge-in uses the latest report, advanced by the time since it arrived, instead of its
        wall-clock estimate. The default ignores it (a provider that needs no truncation)."""
        return None

    def request_response(self, instruction: str | None = None) -> None:
        """Ask the model to respond now (optionally with a one-off instruction)."""
        if not self.capabilities.request_response:
            raise UnsupportedCapability(
                f"{type(self).__name__} ({self.provider}) cannot request a response; check "
                "client.capabilities.request_response first"
            )
        self._request_response(instruction)

    def _request_response(self, instruction: str | None) -> None:
        raise UnsupportedCapability(f"{type(self).__name__} does not implement request_response")
