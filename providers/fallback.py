"""Provider failover: one ``RealtimeAudioClient`` that moves a session between provider targets.

:class:`FallbackClient` runs the session on the first usable target (the primary, then
``RealtimeSessionConfig.fallbacks`` in order) and, when :func:`switch_reason` says the provider
is down, moves it to the next one. The policy (``docs/operations.md``, "Provider failover"):

- **Switches**: the provider cannot be reached or refuses the upgrade with a retryable status
  (5xx, 429) at connect, or gives up after its own reconnect tries (``reconnect_failed``,
  including a Gemini goAway it could not resume); a fatal error that is not the caller's
  (``ProviderAuthError``: the operator's key for that provider); :attr:`FailoverPolicy.
  error_threshold` recoverable server errors or rate limits (:data:`SWITCH_CODES`) within
  ``error_window_s`` mid-call (one is transient and passes through as it is).
- **Never switches**: ``ConfigError`` / ``UsageError`` (raised to the caller),
  ``ConfigRejectedError`` (the provider rejected the caller's config or model) and fatal close
  codes that mean a malformed request (1002, 1003, 1007-1010): every target would refuse it.
- A switch emits ``reconnecting`` (unless the provider's own reconnect already did) and
  ``reconnected`` with ``strategy="failover"``, the new ``provider``, ``model`` and
  ``capabilities``; ``reason`` is the bounded reason label.

What carries over: the conversation (final transcripts, tool calls, results, cancellations;
:class:`protocol.conversation.ConversationLog`) is replayed into the new target's instructions;
tool calls still waiting for a result are reported ``tool-call-cancelled`` (their late results
are dropped here, never sent to another provider session), and the caller's audio since the last
*answered* caller turn (a ``response-done`` ``completed`` with no call pending) is sent to the new
target first, so the question being asked is heard (and a pending call is re-issued by the new
model) while audio of an answered turn is never sent twice. The window is bounded by
:attr:`FailoverPolicy.replay_audio_s`. Output formats are the caller's config on every target.

Capabilities stay static per implementation: each target's client has its own, and this
client's :attr:`capabilities` are the active target's, changing only with a
``reconnected(strategy="failover")`` that carries them.

The breaker: every target's health goes through a :class:`ProviderHealth` (in-process
:class:`LocalHealth`; the workers share ``redisio.health.ProviderBreaker``). A target whose breaker
is open is skipped while another is left; a session on a fallback moves back to the primary only
between turns (no model turn open, no call pending, the caller silent) once its breaker closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from protocol import (
    ConfigRejectedError,
    ConnectionEvent,
    ErrorEvent,
    NotConnectedError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderTarget,
    RealtimeAudioClient,
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    ResponseDoneEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    TranscriptEvent,
    UsageError,
    parse_config,
)
from protocol.client import SessionState
from protocol.conversation import ConversationLog, replay_config
from protocol.events import EVENT_NAMES

__all__ = [
    "NEVER_SWITCH_CLOSE_CODES",
    "SWITCH_CODES",
    "FailoverPolicy",
    "FallbackClient",
    "LocalHealth",
    "ProviderHealth",
    "switch_reason",
]

log = logging.getLogger("voicegrid.fallback")

#: recoverable provider error codes that count towards a mid-call switch
SWITCH_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "rate_limit",
        "overloaded",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "INTERNAL",
        "http_429",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
    }
)
#: close codes that say the request was malformed: the next target would refuse it as well
NEVER_SWITCH_CLOSE_CODES = frozenset({"1002", "1003", "1007", "1008", "1009", "1010"})

Reason = Literal["unreachable", "rate_limit", "server_error", "auth", "recovered"]
ClientFactory = Callable[[ProviderTarget], RealtimeAudioClient]


def switch_reason(error: BaseException) -> Reason | None:
    """The bounded reason to move to the next target after ``error``, or ``None`` to stay."""
    if not isinstance(error, ProviderError):
        return "unreachable" if isinstance(error, TimeoutError | OSError) else None
    if isinstance(error, ConfigRejectedError) or error.code in NEVER_SWITCH_CLOSE_CODES:
        return None
    if isinstance(error, ProviderAuthError):
        return "auth"
    if error.code in ("http_429", "rate_limit_exceeded", "rate_limit", "RESOURCE_EXHAUSTED"):
        return "rate_limit"
    if isinstance(error, ProviderConnectionError):
        return "unreachable"
    return "server_error"


@dataclass(frozen=True)
class FailoverPolicy:
    """When a session moves on, with the defaults ``docs/operations.md`` documents."""

    #: switch-worthy recoverable errors (``SWITCH_CODES``) within ``error_window_s`` to move on
    error_threshold: int = 3
    error_window_s: float = 30.0
    #: seconds one target's connect may take before the next is tried
    connect_timeout_s: float = 10.0
    #: most caller audio kept since the last answered turn (longer questions keep their end)
    replay_audio_s: float = 30.0
    #: move back to the primary at the next safe point once its breaker closed
    fail_back: bool = True
    #: least time on a fallback before moving back (no flapping)
    fail_back_after_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("error_threshold", "error_window_s", "connect_timeout_s", "replay_audio_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"FailoverPolicy.{name}={value!r} is invalid; expected > 0")


class ProviderHealth(Protocol):
    """The circuit breaker of provider targets (``label``: ``provider/model``)."""

    async def allow(self, label: str) -> bool:
        """May a session start on ``label`` now? (closed: yes; open: no; half-open: one probe)"""

    async def record_failure(self, label: str) -> str:
        """``label`` failed; return its breaker state after this failure."""

    async def record_success(self, label: str) -> None:
        """``label`` connected: close its breaker."""

    async def state(self, label: str) -> str:
        """``closed``, ``open`` or ``half-open``."""


@dataclass
class _Breaker:
    failures: int = 0
    window_start: float = 0.0
    open_until: float = 0.0
    probe_until: float = 0.0


class LocalHealth:
    """An in-process :class:`ProviderHealth`: ``threshold`` failures within ``window_s`` open
    the breaker for ``cooldown_s``; then it is half-open and lets one probe through per
    ``probe_timeout_s``; a success closes it, a failure opens it again."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        window_s: float = 60.0,
        cooldown_s: float = 30.0,
        probe_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.window_s = threshold, window_s
        self.cooldown_s, self.probe_timeout_s = cooldown_s, probe_timeout_s
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}

    def _state(self, b: _Breaker, now: float) -> str:
        if b.open_until == 0.0:
            return "closed"
        return "open" if now < b.open_until else "half-open"

    async def state(self, label: str) -> str:
        return self._state(self._breakers.setdefault(label, _Breaker()), self._clock())

    async def allow(self, label: str) -> bool:
        b, now = self._breakers.setdefault(label, _Breaker()), self._clock()
        state = self._state(b, now)
        if state == "half-open" and now >= b.probe_until:
            b.probe_until = now + self.probe_timeout_s
            return True
        return state == "closed"

    async def record_failure(self, label: str) -> str:
        b, now = self._breakers.setdefault(label, _Breaker()), self._clock()
        if now - b.window_start > self.window_s:
            b.failures, b.window_start = 0, now
        b.failures += 1
        if b.failures >= self.threshold or self._state(b, now) == "half-open":
            b.open_until, b.probe_until = now + self.cooldown_s, 0.0
        return self._state(b, now)

    async def record_success(self, label: str) -> None:
        self._breakers[label] = _Breaker()


class FallbackClient(RealtimeAudioClient):
    """A session that moves between provider targets (see the module docstring).

    ``targets[0]`` is the primary; ``factory(target)`` builds an unconnected client for one
    (credentials come from the factory, never from the target). ``connect(config)`` also takes
    ``config.fallbacks`` when ``targets`` has only the primary.
    """

    def __init__(
        self,
        targets: Sequence[ProviderTarget],
        factory: ClientFactory,
        *,
        policy: FailoverPolicy | None = None,
        health: ProviderHealth | None = None,
    ) -> None:
        if not targets:
            raise UsageError("FallbackClient needs at least one provider target")
        super().__init__(model=targets[0].model)
        self._targets = list(targets)
        self._factory = factory
        self.policy = policy or FailoverPolicy()
        self.health: ProviderHealth = health if health is not None else LocalHealth()
        self._index = 0
        self._inner: RealtimeAudioClient | None = None
        self._capabilities = RealtimeCapabilities()
        self._generation = 0
        self._config: RealtimeSessionConfig | None = None
        self.conversation = ConversationLog()
        self._cancelled: set[str] = set()
        # caller audio since the last answered turn: frames, their total, and where it starts
        self._turn_audio: deque[bytes] = deque()
        self._turn_bytes = 0
        self._max_turn_bytes = 0
        self._speech_end: int | None = None  # audio position (bytes) of the last speech-stopped
        self._position = 0  # caller audio bytes sent so far
        self._errors: deque[float] = deque()
        self._reconnecting = False  # a `reconnecting` was emitted and not yet answered
        self._pending_reason: Reason | None = None
        self._switch_task: asyncio.Task[None] | None = None
        self._on_fallback_since = 0.0
        self._response_open = False
        self._speaking = False
        self._closed_emitted = False
        self._imported: dict[str, Any] | None = None
        #: switches so far: (from label, to label, reason, seconds from failure to reconnected)
        self.failovers: list[tuple[str, str, str, float]] = []
        #: caller audio accounting: bytes re-sent to a new target, and bytes of the window
        #: dropped because it outgrew ``replay_audio_s``
        self.replayed_audio_bytes = 0
        self.dropped_replay_bytes = 0

    # --- what the active target says ----------------------------------------------------------

    @property
    def capabilities(self) -> RealtimeCapabilities:  # type: ignore[override]
        return self._capabilities

    @property
    def provider(self) -> str:  # type: ignore[override]
        return self._targets[self._index].provider

    @property
    def target(self) -> ProviderTarget:
        return self._targets[self._index]

    @property
    def inner(self) -> RealtimeAudioClient | None:
        return self._inner

    # --- connect / disconnect -----------------------------------------------------------------

    async def connect(self, config: RealtimeSessionConfig | dict[str, Any]) -> None:
        parsed = parse_config(config)
        if self.state is not SessionState.IDLE:
            raise UsageError(f"connect() called on a {self.state.value} session")
        if len(self._targets) == 1 and parsed.fallbacks:
            self._targets.extend(parsed.fallbacks)
        self._config = parsed
        fmt = parsed.input_audio
        self._max_turn_bytes = int(self.policy.replay_audio_s * fmt.bytes_per_second)
        self._lifecycle.to(SessionState.CONNECTING)
        try:
            await self._connect_from(self._index, first=True, failed_at=None)
        except BaseException:
            self._lifecycle.state = SessionState.IDLE  # connect may be tried again
            raise
        self._lifecycle.to(SessionState.LIVE)
        self.emit(
            "connected",
            ConnectionEvent(reason="connected", provider=self.provider, model=self.model),
        )

    async def _candidates(self, start: int) -> list[int]:
        """Target indexes to try from ``start`` on: breaker-open ones last (never none)."""
        order = list(range(start, len(self._targets)))
        usable = [i for i in order if await self.health.allow(self._targets[i].label)]
        return usable + [i for i in order if i not in usable]

    async def _connect_from(self, start: int, *, first: bool, failed_at: float | None) -> None:
        """Connect the first target from ``start`` that accepts; raise the last error."""
        last: BaseException | None = None
        reason: Reason | None = None
        for index in await self._candidates(start):
            target = self._targets[index]
            client = self._factory(target)
            strategy = None
            if first and self._imported is not None and index == self._index:
                strategy = client.import_state(self._imported)
            config = self._target_config(index, replay=not first or strategy is None)
            self._attach(client)
            try:
                await asyncio.wait_for(client.connect(config), self.policy.connect_timeout_s)
            except (ProviderError, TimeoutError, OSError) as exc:
                self._detach()
                reason = switch_reason(exc)
                if reason is None:
                    raise
                log.warning("provider target %s failed (%s); trying the next", target.label, exc)
                await self.health.record_failure(target.label)
                last = exc
                if failed_at is None:
                    failed_at = time.perf_counter()
                continue
            await self.health.record_success(target.label)
            self._capabilities = client.capabilities
            previous = self._targets[self._index].label
            self._index = index
            self.model = target.model
            self._on_fallback_since = time.monotonic()  # the minimum time before moving back
            if first and index and failed_at is not None:  # moved before the session started
                self.failovers.append(
                    (
                        previous,
                        target.label,
                        reason or "unreachable",
                        time.perf_counter() - failed_at,
                    )
                )
            return
        assert last is not None
        raise last

    def _target_config(self, index: int, *, replay: bool) -> RealtimeSessionConfig:
        assert self._config is not None
        config = self._config
        if index:
            target = self._targets[index]
            config = config.for_target(target, same_provider=target.provider == self.provider)
        else:
            config = config.model_copy(update={"fallbacks": []})
        return replay_config(config, self.conversation) if replay else config

    async def disconnect(self) -> None:
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        if self.state is SessionState.IDLE:
            self._lifecycle.to(SessionState.CLOSED)
            return
        self._lifecycle.to(SessionState.CLOSING)
        task, self._switch_task = self._switch_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        inner = self._inner
        self._detach()
        if inner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(inner.disconnect(), 5.0)
        self._close(ConnectionEvent(reason="disconnect", code=1000))

    def _close(self, event: ConnectionEvent) -> None:
        if self.state is not SessionState.CLOSED:
            if self.state is not SessionState.CLOSING:
                self._lifecycle.to(SessionState.CLOSING)
            self._lifecycle.to(SessionState.CLOSED)
        if not self._closed_emitted:
            self._closed_emitted = True
            self.emit("closed", event)

    # --- inner client events ------------------------------------------------------------------

    def _attach(self, client: RealtimeAudioClient) -> None:
        self._generation += 1
        generation = self._generation
        self._inner = client
        for name in sorted(EVENT_NAMES):

            def handle(payload: Any, name: str = name) -> None:
                if generation == self._generation:
                    self._on_inner(name, payload)

            client.on(name, handle)  # type: ignore[arg-type]

    def _detach(self) -> None:
        self._generation += 1
        self._inner = None

    def _on_inner(self, name: str, payload: Any) -> None:
        if name == "connected":
            return  # ours is emitted by connect()/the switch
        if name == "closed":
            self._on_inner_closed(payload)
            return
        if isinstance(payload, ErrorEvent):
            if self._on_inner_error(payload):
                return
        elif name == "reconnecting":
            self._reconnecting = True
        elif name == "reconnected":
            self._reconnecting = False
        self._observe(name, payload)
        self.emit(name, payload)

    def _on_inner_error(self, event: ErrorEvent) -> bool:
        """True when the error is taken over by a switch (and re-emitted as recoverable)."""
        if self.state is not SessionState.LIVE:
            return False
        if not event.recoverable:
            inner = self._inner
            error = getattr(inner, "final_error", None) if inner is not None else None
            fatal = switch_reason(error or ProviderError(event.message, code=event.code))
            if fatal is None or not self._has_next():
                return False
            self._pending_reason = fatal
            self.emit("error", event.model_copy(update={"recoverable": True}))
            return True
        if event.code in SWITCH_CODES and self._has_next():
            now = time.monotonic()
            self._errors.append(now)
            while self._errors and now - self._errors[0] > self.policy.error_window_s:
                self._errors.popleft()
            if len(self._errors) >= self.policy.error_threshold:
                self._errors.clear()
                self.emit("error", event)
                reason: Reason = "rate_limit" if "rate" in event.code.lower() else "server_error"
                if event.code == "RESOURCE_EXHAUSTED":
                    reason = "rate_limit"
                self._begin_switch(reason, quit_inner=True)
                return True
        return False

    def _has_next(self) -> bool:
        return self._index + 1 < len(self._targets)

    def _on_inner_closed(self, event: ConnectionEvent) -> None:
        if self.state is not SessionState.LIVE:
            return
        reason = self._pending_reason
        if reason is None:
            self._detach()
            self._close(event)
            return
        self._begin_switch(reason, quit_inner=False)

    def _observe(self, name: str, payload: Any) -> None:
        """The conversation and the answered-turn boundary of the caller audio."""
        if isinstance(payload, TranscriptEvent):
            if payload.final:
                self.conversation.add_message(payload.role, payload.text)
        elif isinstance(payload, ToolCallEvent):
            self.conversation.add_tool_call(payload.call_id, payload.name, payload.arguments)
        elif isinstance(payload, ToolCallCancelledEvent):
            for call_id in payload.call_ids:
                self.conversation.add_tool_cancelled(call_id)
        elif name == "speech-started":
            self._speaking = True
        elif name == "speech-stopped":
            self._speaking = False
            self._speech_end = self._position
        elif name == "audio":
            self._response_open = True
        elif isinstance(payload, ResponseDoneEvent):
            self._response_open = False
            if payload.status == "completed" and not self.conversation.pending_calls():
                self._answered(self._speech_end)
            self._maybe_fail_back()

    def _answered(self, end: int | None) -> None:
        """The caller turn that ended at ``end`` was answered: its audio is never sent again."""
        if end is None:
            end = self._position  # manual turns: everything before the answer
        start = self._position - self._turn_bytes
        while self._turn_audio and start + len(self._turn_audio[0]) <= end:
            frame = self._turn_audio.popleft()
            start += len(frame)
            self._turn_bytes -= len(frame)
        self._speech_end = None

    # --- the switch ---------------------------------------------------------------------------

    def _begin_switch(self, reason: Reason, *, quit_inner: bool) -> None:
        if self._switch_task is not None or self.state is not SessionState.LIVE:
            return
        self._pending_reason = None
        failed_at = time.perf_counter()
        old = self._inner
        self._detach()
        self._lifecycle.to(SessionState.RECONNECTING)
        if not self._reconnecting:
            self.emit(
                "reconnecting",
                ConnectionEvent(
                    reason=reason, strategy="failover", provider=self.provider, model=self.model
                ),
            )
        self._reconnecting = True
        self._switch_task = asyncio.get_running_loop().create_task(
            self._switch(reason, old if quit_inner else None, failed_at),
            name="voicegrid-failover",
        )

    async def _switch(
        self, reason: Reason, old: RealtimeAudioClient | None, failed_at: float
    ) -> None:
        previous = self.target
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.disconnect(), 2.0)
        try:
            if reason == "recovered":
                start = 0
            else:
                await self.health.record_failure(previous.label)
                start = self._index + 1
            try:
                await self._connect_from(start, first=False, failed_at=failed_at)
            except Exception as exc:
                if self.state is not SessionState.RECONNECTING:
                    return
                log.warning("failover from %s found no working target: %s", previous.label, exc)
                self.emit(
                    "error",
                    ErrorEvent(
                        code="failover_exhausted",
                        message=f"no provider target accepted the session after {previous.label} "
                        f"failed ({reason}): {exc}",
                        recoverable=False,
                    ),
                )
                self._close(ConnectionEvent(reason="failover_exhausted"))
                return
            if self.state is not SessionState.RECONNECTING:
                inner = self._inner
                self._detach()
                if inner is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(inner.disconnect(), 2.0)
                return
            self._carry_over(previous.label, reason, failed_at)
        finally:
            if self._switch_task is asyncio.current_task():
                self._switch_task = None

    def _carry_over(self, previous: str, reason: Reason, failed_at: float) -> None:
        inner = self._inner
        assert inner is not None
        pending = self.conversation.pending_calls()
        for call_id in pending:
            self.conversation.add_tool_cancelled(call_id)
            self._cancelled.add(call_id)
        for frame in self._turn_audio:
            inner.send_audio(frame)
            self.replayed_audio_bytes += len(frame)
        self._speech_end = None
        self._errors.clear()
        self._on_fallback_since = time.monotonic()
        self._lifecycle.to(SessionState.LIVE)
        self._reconnecting = False
        if pending:
            self.emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=pending))
        self.failovers.append(
            (previous, self.target.label, reason, time.perf_counter() - failed_at)
        )
        self.emit(
            "reconnected",
            ConnectionEvent(
                reason=reason,
                strategy="failover",
                provider=self.provider,
                model=self.model,
                capabilities=self.capabilities.model_dump(mode="json"),
            ),
        )

    def _maybe_fail_back(self) -> None:
        if not (self.policy.fail_back and self._index and self.state is SessionState.LIVE):
            return
        if time.monotonic() - self._on_fallback_since < self.policy.fail_back_after_s:
            return
        asyncio.get_running_loop().create_task(self._fail_back(), name="voicegrid-fail-back")

    async def _fail_back(self) -> None:
        if await self.health.state(self._targets[0].label) != "closed":
            return
        # a safe point: no model turn open, no call pending, the caller silent
        if self._response_open or self._speaking or self.conversation.pending_calls():
            return
        if self.state is SessionState.LIVE and self._switch_task is None:
            self._begin_switch("recovered", quit_inner=True)

    # --- the rest of the interface goes to the active target ----------------------------------

    def _live_inner(self, what: str) -> RealtimeAudioClient:
        inner = self._inner
        if inner is None or self.state is not SessionState.LIVE:
            raise NotConnectedError(f"{what} needs a live session (the session is {self.state})")
        return inner

    async def ping(self) -> bool:
        inner = self._inner
        return bool(inner is not None and await inner.ping())

    def send_audio(self, frame: bytes) -> None:
        if not self.connected:
            raise NotConnectedError("send_audio needs a connected session")
        inner = self._inner
        if inner is not None and self.state is SessionState.LIVE:
            inner.send_audio(frame)  # validates the frame
        elif not isinstance(frame, bytes | bytearray | memoryview):
            raise UsageError(f"audio frame must be bytes, got {type(frame).__name__}")
        data = bytes(frame)
        self._turn_audio.append(data)
        self._turn_bytes += len(data)
        self._position += len(data)
        while self._turn_bytes > self._max_turn_bytes and len(self._turn_audio) > 1:
            dropped = self._turn_audio.popleft()
            self._turn_bytes -= len(dropped)
            self.dropped_replay_bytes += len(dropped)

    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        kept = []
        for response in responses:
            call_id = getattr(response, "call_id", None)
            if call_id is None and isinstance(response, Mapping):
                call_id = response.get("call_id")
            if call_id in self._cancelled:
                log.warning(
                    "dropped the late result of tool call %s (cancelled by a failover)", call_id
                )
                continue
            kept.append(response)
        if not kept:
            return
        self._live_inner("send_tool_response").send_tool_response(kept)
        for response in kept:
            parsed = (
                response
                if isinstance(response, RealtimeToolResponse)
                else RealtimeToolResponse.model_validate(response)
            )
            self.conversation.add_tool_result(parsed.call_id, parsed.output)

    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        inner = self._live_inner("update_config")
        await inner.update_config(config)
        assert self._config is not None
        update = config if isinstance(config, RealtimeSessionConfigUpdate) else None
        if update is None:
            update = RealtimeSessionConfigUpdate.model_validate(config)
        self._config = self._config.merged(update)

    def _request_response(self, instruction: str | None) -> None:
        self._live_inner("request_response").request_response(instruction)
        self._speech_end = self._position

    def report_playback(self, response_id: str | None, played_ms: int) -> None:
        inner = self._inner
        if inner is not None:
            inner.report_playback(response_id, played_ms)

    # --- takeover in another process ----------------------------------------------------------

    @property
    def state_version(self) -> int:
        inner = self._inner
        return self._state_version * 1_000_003 + (inner.state_version if inner else 0)

    def export_state(self) -> dict[str, Any]:
        inner = self._inner
        return {
            "fallback": {"target": self._index, "conversation": self.conversation.items},
            "inner": inner.export_state() if inner is not None else {},
        }

    def import_state(self, state: dict[str, Any]) -> Literal["resumed", "replayed"] | None:
        own = state.get("fallback")
        if not isinstance(own, dict):
            return None
        index = own.get("target")
        if isinstance(index, int) and 0 <= index < len(self._targets):
            self._index = index
            self.model = self._targets[index].model
        items = own.get("conversation")
        if isinstance(items, list):
            self.conversation = ConversationLog(items)
        inner = state.get("inner")
        self._imported = inner if isinstance(inner, dict) else {}
        return "replayed"


def fallback_targets(
    provider: str, model: str, options: Mapping[str, Any], fallbacks: Sequence[Any]
) -> list[ProviderTarget]:
    """The primary and the fallbacks as targets (dicts are validated)."""
    primary = ProviderTarget(provider=provider, model=model, options=dict(options))
    return [primary] + [
        f if isinstance(f, ProviderTarget) else ProviderTarget.model_validate(f) for f in fallbacks
    ]
