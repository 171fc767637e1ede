"""OpenAI Realtime GA translator: wire JSON <-> ``protocol`` events, with no I/O.

:class:`OpenAITranslator` is a plain object. ``receive(message, now)`` takes one parsed server
event and returns :data:`Action` s (events to emit, frames to send, handshake and update
outcomes, fatal errors); the command methods (``handshake_frames``, ``audio_frame``,
``tool_responses``, ``request_response``, ``update``) return the frames to send. The response,
item and tool-call state machine lives here and nowhere else, so tests drive it with recorded
wire JSON and no socket. ``now`` is a monotonic time in seconds, used only to estimate how much
of a reply has been played when the caller barges in.

Contract details it implements (the session object itself, and which fields an update sends,
are built in :mod:`.session`; event names and payloads are those of ``protocol/events.py``):

- Beta server event names (``response.audio.*``, ``response.audio_transcript.*``,
  ``response.text.*``, ``conversation.item.created``) are accepted as their GA twins.
- ``tool-call`` fires at ``response.function_call_arguments.done`` with parsed arguments;
  arguments that are not a JSON object produce a recoverable ``error`` event and an automatic
  error output for that call, so the model is never left waiting for it.
- Tool outputs are sent at once; exactly one ``response.create`` follows, after the response
  that asked is done, when no other response is active or requested, and not while the caller's
  turn is open under server VAD (the automatic response then sees the outputs). A response that
  the server created after the outputs were added covers them; no extra ``response.create``.
- Barge-in (``speech_started`` while a reply is active or still playing): ``interrupted`` and a
  ``conversation.item.truncate`` whose integer ``audio_end_ms`` is the estimated played time
  (wall clock since the item's first audio) clamped to the audio actually received
  (bytes/48 for PCM16 24 kHz, bytes/8 for G.711); no truncate before the first audio frame.
  With ``interrupt_response=False`` the client cancels the response itself (``response.cancel``
  before the truncate). Trailing deltas of an interrupted response are dropped.
- Exactly one final assistant ``transcript`` per reply item (the whole text), also when the reply
  was cancelled; user transcripts are deltas then one final per item.
- A cancelled response's tool calls without a result become ``tool-call-cancelled``; their late
  results are dropped (logged).
- The conversation (user and assistant text, function calls and outputs) is kept for replay
  after a reconnect (``replay_items``); ``import_items`` seeds it from another process.
- Errors are matched to the client event that caused them by ``event_id`` (every control frame
  carries one): a rejected handshake or update fails that call; a ``response.create`` that lost
  the race to another response is sent again after it; ``response_cancel_not_active`` (our cancel
  raced the natural end of the response) is only logged; everything else is a recoverable
  ``error`` event unless its code is in :data:`FATAL_ERROR_CODES`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from protocol.audio import AudioConverter
from protocol.config import (
    AudioFormat,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
)
from protocol.errors import (
    ConfigError,
    ConfigRejectedError,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
)
from protocol.events import (
    AudioEvent,
    ErrorEvent,
    InterruptedEvent,
    ResponseDoneEvent,
    SpeechEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    TranscriptEvent,
    Usage,
)
from providers.translator import Action, Emit, Frame, Send, Signal

from .session import (
    DEFAULT_TRANSCRIPTION_MODEL,
    PCM24K,
    bytes_per_ms,
    plan_update,
    session_payload,
    wire_format,
    wire_format_json,
)

__all__ = [
    "DEFAULT_TRANSCRIPTION_MODEL",
    "FATAL_ERROR_CODES",
    "PCM24K",
    "Action",
    "Emit",
    "Fatal",
    "HandshakeDone",
    "HandshakeFailed",
    "OpenAITranslator",
    "Reconnect",
    "Send",
    "UpdateDone",
    "UpdateFailed",
    "UpdatePlan",
    "wire_format",
    "wire_format_json",
]

log = logging.getLogger("voicegrid.openai")

#: Error codes that end the session: credentials, account or billing problems.
FATAL_ERROR_CODES = frozenset(
    {
        "invalid_api_key",
        "insufficient_quota",
        "account_deactivated",
        "billing_hard_limit_reached",
        "billing_not_active",
        "organization_deactivated",
        "invalid_authentication",
        "unauthorized",
    }
)
_FATAL_ERROR_TYPES = frozenset({"authentication_error", "permission_error"})

_BETA_ALIASES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}

_IGNORED = frozenset(
    {
        "session.created",
        "rate_limits.updated",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.dtmf_event_received",
        "conversation.created",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.segment",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
    }
)

_RESPONSE_STATUSES = ("completed", "cancelled", "failed", "incomplete")


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class HandshakeDone(Signal):
    """The session config of the (re)connect handshake was applied (``session.updated``)."""


@dataclass(frozen=True, slots=True)
class HandshakeFailed(Signal):
    """The server rejected the handshake's session config or the credentials."""

    error: ProviderError


@dataclass(frozen=True, slots=True)
class UpdateDone(Signal):
    """The ``session.update`` with ``event_id`` was applied."""

    event_id: str


@dataclass(frozen=True, slots=True)
class UpdateFailed(Signal):
    """The ``session.update`` with ``event_id`` was rejected; the config was restored."""

    event_id: str
    error: ProviderError


@dataclass(frozen=True, slots=True)
class Fatal(Signal):
    """The session cannot go on (credentials, quota, billing)."""

    error: ProviderError


@dataclass(frozen=True, slots=True)
class Reconnect(Signal):
    """The server ended the session but a new connection can continue it (replayed)."""

    reason: str


@dataclass(frozen=True)
class UpdatePlan:
    """What ``update`` decided: the frame to send (``event_id`` None: nothing to send)."""

    event_id: str | None
    actions: list[Action]
    previous: RealtimeSessionConfig
    config: RealtimeSessionConfig


# ---------------------------------------------------------------------------- state


@dataclass
class _Response:
    id: str
    calls: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    done: bool = False
    covered: bool = False  # its tool outputs reached a later response: no follow-up needed


@dataclass
class _Call:
    call_id: str
    name: str
    response_id: str | None
    state: Literal["streaming", "emitted", "answered", "cancelled"] = "streaming"
    arguments: str = ""
    acked: bool = False  # the server added its function_call_output item


@dataclass
class _AudioItem:
    item_id: str
    response_id: str | None
    content_index: int
    first_at: float
    wire_bytes: int = 0
    truncated: bool = False


@dataclass
class _Request:
    event_id: str
    instruction: str | None
    explicit: bool
    covers: list[str]


@dataclass
class _Entry:
    """One conversation item kept for replay."""

    kind: Literal["user", "assistant", "call", "output"]
    key: str
    parts: list[str] = field(default_factory=list)
    text: str | None = None  # final text when known
    final_sent: bool = False
    response_id: str | None = None

    def full_text(self) -> str:
        return self.text if self.text is not None else "".join(self.parts)


@dataclass
class _PendingUpdate:
    previous: RealtimeSessionConfig
    config: RealtimeSessionConfig


# ---------------------------------------------------------------------------- helpers


def _field(message: Frame, key: str, kind: type) -> Any:
    value = message.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProviderProtocolError(
            f"{message.get('type')!r} event has {key}={value!r}; expected a {kind.__name__}"
        )
    return value


def _opt(message: Frame, key: str, kind: type) -> Any:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise ProviderProtocolError(
            f"{message.get('type')!r} event has {key}={value!r}; expected a {kind.__name__}"
        )
    return value


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------- translator


class OpenAITranslator:
    """Pure OpenAI Realtime GA protocol state machine for one session (see module docstring).

    ``config`` is the session config it maps to the wire; ``transcription_model`` the input
    transcription model; ``replay_max_chars`` caps the text re-sent after a reconnect (the
    oldest items are dropped first).
    """

    def __init__(
        self,
        config: RealtimeSessionConfig,
        *,
        transcription_model: str = DEFAULT_TRANSCRIPTION_MODEL,
        replay_max_chars: int = 40_000,
        event_prefix: str = "vg",
    ) -> None:
        self.config = config
        self.transcription_model = transcription_model
        self.replay_max_chars = replay_max_chars
        self._ids = itertools.count(1)
        self._prefix = event_prefix
        self._live = False
        self._handshake_id: str | None = None
        self._updates: dict[str, _PendingUpdate] = {}
        self._responses: dict[str, _Response] = {}
        self._calls: dict[str, _Call] = {}
        self._active: str | None = None
        self._requested: _Request | None = None
        self._pending_requests: deque[str | None] = deque()
        self._user_turn_open = False
        self._interrupted: set[str] = set()
        self._audio_item: _AudioItem | None = None
        self._audio_seen = False
        self._uncommitted_bytes = 0
        self._history: list[_Entry] = []
        self._replayed_outputs: set[str] = set()
        self._seeded = False
        #: the last error the server sent while a handshake was pending (None when none)
        self.handshake_error: ProviderError | None = None
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._out_wire = wire_format(config.output_audio)
        self._out_conv = AudioConverter(self._out_wire, config.output_audio)

    # ------------------------------------------------------------------ introspection

    @property
    def active_response(self) -> str | None:
        """The id of the response in progress, if any."""
        return self._active

    @property
    def input_wire_format(self) -> AudioFormat:
        return wire_format(self.config.input_audio)

    def is_idle(self) -> bool:
        """Between turns: no response active, requested or owed, caller not mid-turn."""
        return (
            self._active is None
            and self._requested is None
            and not self._pending_requests
            and not self._user_turn_open
            and not self._due_followups()
            and not any(c.state == "emitted" for c in self._calls.values())
        )

    def history(self) -> list[tuple[str, str]]:
        """The conversation kept for replay as ``(kind, text)`` pairs, in order."""
        out: list[tuple[str, str]] = []
        for entry in self._history:
            if entry.kind in ("user", "assistant"):
                out.append((entry.kind, entry.full_text()))
            else:
                out.append((entry.kind, entry.key))
        return out

    def _next_id(self) -> str:
        return f"{self._prefix}_{next(self._ids)}"

    # ------------------------------------------------------------------ session config

    def session_payload(
        self, config: RealtimeSessionConfig, only: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The GA session object for ``config``; with ``only``, just those config fields."""
        return session_payload(config, transcription_model=self.transcription_model, only=only)

    def handshake_frames(self, *, reconnect: bool) -> list[Frame]:
        """``session.update`` with the whole config; on a reconnect (or after ``import_items``)
        also the conversation replay."""
        event_id = self._next_id()
        self._handshake_id = event_id
        self.handshake_error = None
        frames: list[Frame] = [
            {
                "type": "session.update",
                "event_id": event_id,
                "session": self.session_payload(self.config),
            }
        ]
        if reconnect or self._seeded:
            frames.extend(self.replay_frames())
            self._seeded = False
        return frames

    def update(self, update: RealtimeSessionConfigUpdate) -> UpdatePlan:
        """Plan an in-place update: only the changed fields go on the wire.

        A voice change after the model produced audio on this connection cannot be applied
        (the server would reject the whole update): it becomes a recoverable ``error`` event
        ``cannot_update_voice`` and the remaining changes are still sent.
        """
        previous = self.config
        new, changed, refused = plan_update(previous, update, audio_seen=self._audio_seen)
        actions: list[Action] = [] if refused is None else [Emit("error", refused)]
        if new.output_audio != previous.output_audio and "output_audio" not in changed:
            self._rebuild_output(new)  # same wire format: only the conversion changes
        self.config = new
        if not changed:
            return UpdatePlan(None, actions, previous, new)
        event_id = self._next_id()
        self._updates[event_id] = _PendingUpdate(previous, new)
        actions.append(
            Send(
                {
                    "type": "session.update",
                    "event_id": event_id,
                    "session": self.session_payload(new, only=changed),
                }
            )
        )
        return UpdatePlan(event_id, actions, previous, new)

    def forget_update(self, event_id: str) -> None:
        """Stop waiting for the answer to update ``event_id`` (the caller gave up on it)."""
        self._updates.pop(event_id, None)

    def _rebuild_output(self, config: RealtimeSessionConfig) -> None:
        self._out_wire = wire_format(config.output_audio)
        self._out_conv = AudioConverter(self._out_wire, config.output_audio)

    # ------------------------------------------------------------------ commands

    def audio_frame(self, chunk: bytes) -> Frame:
        """``input_audio_buffer.append`` for ``chunk`` (already in the wire format)."""
        return {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}

    def audio_pushed(self, nbytes: int) -> None:
        """Count input audio queued since the last commit (manual turn detection)."""
        self._uncommitted_bytes += nbytes

    def request_response(self, instruction: str | None) -> list[Action]:
        """Ask for a response; queued until no response is active (or owed to the server).

        With manual turn detection the input audio buffer is committed first when it holds at
        least 100 ms (the server rejects shorter commits).
        """
        actions: list[Action] = []
        min_bytes = int(100 * bytes_per_ms(self.input_wire_format))
        if self.config.turn_detection.mode == "manual" and self._uncommitted_bytes >= min_bytes:
            actions.append(Send({"type": "input_audio_buffer.commit", "event_id": self._next_id()}))
            self._uncommitted_bytes = 0
        self._pending_requests.append(instruction)
        actions.extend(self._maybe_respond())
        return actions

    def tool_responses(self, responses: Iterable[RealtimeToolResponse]) -> list[Action]:
        """``function_call_output`` items now; the follow-up ``response.create`` when due."""
        # Encode everything first: a bad output raises before any state changes.
        encoded = [(response, self._encode_output(response)) for response in responses]
        actions: list[Action] = []
        for response, output in encoded:
            call = self._calls.get(response.call_id)
            if call is not None and call.state == "cancelled":
                log.info(
                    "dropping the result of cancelled tool call %s (%s)", call.call_id, call.name
                )
                continue
            if call is not None and call.state == "answered":
                log.warning("tool call %s already has a result; duplicate dropped", call.call_id)
                continue
            actions.append(
                Send(
                    {
                        "type": "conversation.item.create",
                        "event_id": self._next_id(),
                        "item": {
                            "type": "function_call_output",
                            "call_id": response.call_id,
                            "output": output,
                        },
                    }
                )
            )
            if call is None:
                # A call this session never announced (e.g. restored elsewhere): answer it and
                # owe the model one follow-up as if its response were done.
                call = _Call(response.call_id, response.name or "", None)
                self._calls[call.call_id] = call
                orphan = _Response(id=f"external:{call.call_id}", calls=[call.call_id], done=True)
                self._responses[orphan.id] = orphan
            call.state = "answered"
            entry = _Entry("output", call.call_id, text=output)
            self._add_entry(entry)
        actions.extend(self._maybe_respond())
        return actions

    @staticmethod
    def _encode_output(response: RealtimeToolResponse) -> str:
        value: Any = {"error": response.output} if response.is_error else response.output
        if isinstance(value, str):
            return value
        try:
            return orjson.dumps(value).decode()
        except TypeError as exc:
            raise ConfigError(
                f"tool result for call {response.call_id!r} is not JSON-serializable: {exc}; "
                "expected str, number, bool, None, list or dict"
            ) from exc

    # ------------------------------------------------------------------ connection lifecycle

    def reset_connection(self) -> list[Action]:
        """The connection is gone: close out the reply in flight and per-connection state.

        A reply cut by the connection loss gets its final transcript and a ``response-done``
        with status ``failed``; tool calls already announced stay pending (they are replayed,
        so their results can still be delivered); a ``response.create`` not yet answered is
        asked again on the new connection.
        """
        actions: list[Action] = []
        self._live = False
        self._handshake_id = None
        if self._active is not None:
            response = self._responses.get(self._active)
            if response is not None:
                actions.extend(self._finish_transcripts(response))
                response.done = True
                for call_id in response.calls:
                    call = self._calls[call_id]
                    if call.state == "streaming":
                        call.state = "cancelled"
            actions.append(
                Emit("response-done", ResponseDoneEvent(response_id=self._active, status="failed"))
            )
            self._active = None
        self._release_request(requeue=True)
        self._user_turn_open = False
        self._audio_item = None
        self._interrupted.clear()
        self._audio_seen = False
        self._uncommitted_bytes = 0
        self._out_conv = AudioConverter(self._out_wire, self.config.output_audio)
        return actions

    def after_handshake(self) -> list[Action]:
        """The connection is live: send what is owed (queued requests, tool follow-ups)."""
        self._live = True
        return self._maybe_respond()

    def filter_held(self, frames: list[Frame]) -> list[Frame]:
        """Of the frames a lost socket never took, keep those the new handshake did not cover.

        The handshake re-sent the whole config and replayed the conversation (with the tool
        outputs known then); responses are re-requested from state; truncates and cancels refer
        to the old connection. Kept: ``input_audio_buffer.commit`` (after the held audio) and
        tool outputs that arrived after the replay was built.
        """
        kept: list[Frame] = []
        for frame in frames:
            kind = frame.get("type")
            if kind == "input_audio_buffer.commit":
                kept.append(frame)
            elif kind == "conversation.item.create":
                item = _as_dict(frame.get("item"))
                if (
                    item.get("type") == "function_call_output"
                    and item.get("call_id") not in self._replayed_outputs
                ):
                    kept.append(frame)
        return kept

    def replay_items(self) -> list[dict[str, Any]]:
        """The conversation as GA conversation items (text messages, function calls and their
        outputs), oldest first, capped at ``replay_max_chars``."""
        calls_kept: set[str] = set()
        items: list[dict[str, Any]] = []
        for entry in self._history:
            if entry.kind in ("user", "assistant"):
                text = entry.full_text()
                if not text:
                    continue
                content_type = "input_text" if entry.kind == "user" else "output_text"
                items.append(
                    {
                        "type": "message",
                        "role": entry.kind,
                        "content": [{"type": content_type, "text": text}],
                    }
                )
            elif entry.kind == "call":
                call = self._calls.get(entry.key)
                if call is None or call.state in ("streaming", "cancelled"):
                    continue
                calls_kept.add(call.call_id)
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.call_id,
                        "name": call.name,
                        "arguments": call.arguments or "{}",
                    }
                )
            elif entry.key in calls_kept:
                items.append(
                    {"type": "function_call_output", "call_id": entry.key, "output": entry.text}
                )
        return self._cap_replay(items)

    def replay_frames(self) -> list[Frame]:
        """``conversation.item.create`` frames re-creating the conversation, oldest first."""
        items = self.replay_items()
        self._replayed_outputs = {
            i["call_id"] for i in items if i["type"] == "function_call_output"
        }
        for call in self._calls.values():
            if call.state == "answered":
                call.acked = True  # the replayed outputs precede any later response
        return [
            {"type": "conversation.item.create", "event_id": self._next_id(), "item": item}
            for item in items
        ]

    def import_items(self, items: list[dict[str, Any]]) -> None:
        """Seed the conversation from ``replay_items`` of another client (a takeover); the next
        handshake replays it. Raises ``ConfigError`` naming the first item it cannot use."""
        for index, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "message" and item.get("role") in ("user", "assistant"):
                content = item.get("content")
                text = content[0].get("text") if isinstance(content, list) and content else None
                if isinstance(text, str):
                    entry = _Entry(item["role"], f"imported:{index}", text=text, final_sent=True)
                    self._add_entry(entry)
                    continue
            elif kind == "function_call" and all(
                isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")
            ):
                call = self._register_call(item["call_id"], item["name"], None)
                call.arguments = item["arguments"]
                call.state = "emitted"
                continue
            elif kind == "function_call_output" and all(
                isinstance(item.get(k), str) for k in ("call_id", "output")
            ):
                answered = self._calls.get(item["call_id"])
                if answered is not None:
                    answered.state = "answered"
                    self._add_entry(_Entry("output", answered.call_id, text=item["output"]))
                continue
            raise ConfigError(
                f"imported conversation item {index} is not a text message, function_call or "
                f"function_call_output: {item!r:.200}"
            )
        self._seeded = bool(items)

    def _cap_replay(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        def size(item: dict[str, Any]) -> int:
            return len(orjson.dumps(item))

        total = sum(size(i) for i in items)
        start = 0
        while total > self.replay_max_chars and start < len(items):
            total -= size(items[start])
            start += 1
        kept = items[start:]
        # An output whose call was dropped would be rejected: drop it too.
        call_ids = {i["call_id"] for i in kept if i["type"] == "function_call"}
        return [i for i in kept if i["type"] != "function_call_output" or i["call_id"] in call_ids]

    # ------------------------------------------------------------------ server events

    def receive(self, message: Frame, now: float) -> list[Action]:
        """Translate one server event; raise ``ProviderProtocolError`` if it is malformed."""
        kind = message.get("type")
        if not isinstance(kind, str):
            raise ProviderProtocolError(f"server event without a string 'type': {kind!r}")
        kind = _BETA_ALIASES.get(kind, kind)
        handler = _HANDLERS.get(kind)
        if handler is None:
            if kind not in _IGNORED:
                log.debug("ignoring unknown server event %r", kind)
            return []
        return handler(self, message, now)

    def _on_session_updated(self, message: Frame, _now: float) -> list[Action]:
        _field(message, "session", dict)
        if self._handshake_id is not None:
            self._handshake_id = None
            # A full session.update on a new connection carries every pending update too.
            actions: list[Action] = [HandshakeDone()]
            actions.extend(UpdateDone(event_id) for event_id in self._updates)
            self._updates.clear()
            return actions
        if self._updates:
            event_id = next(iter(self._updates))
            pending = self._updates.pop(event_id)
            if pending.previous.output_audio != pending.config.output_audio:
                self._rebuild_output(pending.config)
            return [UpdateDone(event_id)]
        return []

    def _on_error(self, message: Frame, _now: float) -> list[Action]:
        error = _field(message, "error", dict)
        code = error.get("code") if isinstance(error.get("code"), str) else None
        etype = error.get("type") if isinstance(error.get("type"), str) else None
        text = error.get("message") if isinstance(error.get("message"), str) else ""
        event_id = error.get("event_id") if isinstance(error.get("event_id"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else ""
        code = code or etype or "unknown_error"
        detail = f"OpenAI error {code}: {text}" + (f" (param {param})" if param else "")

        if code in FATAL_ERROR_CODES or etype in _FATAL_ERROR_TYPES:
            auth = ProviderAuthError(detail, code=code)
            return [HandshakeFailed(auth)] if self._handshake_id else [Fatal(auth)]
        if code == "session_expired":
            return [Reconnect(detail)]
        session_param = param.startswith("session")
        if self._handshake_id is not None:
            # Remembered: if the server closes the socket next, this is why.
            self.handshake_error = ConfigRejectedError(detail, code=code)
        if self._handshake_id is not None and (
            event_id == self._handshake_id or (event_id is None and session_param)
        ):
            return [HandshakeFailed(ConfigRejectedError(detail, code=code))]
        update_id = event_id if event_id in self._updates else None
        if update_id is None and event_id is None and session_param and self._updates:
            update_id = next(iter(self._updates))
        if update_id is not None:
            pending = self._updates.pop(update_id)
            self.config = pending.previous
            return [UpdateFailed(update_id, ConfigRejectedError(detail, code=code))]
        request = self._requested
        if request is not None and (
            event_id == request.event_id
            or (event_id is None and code == "conversation_already_has_active_response")
        ):
            if code == "conversation_already_has_active_response":
                # Another response started first; ours goes out after that one is done.
                log.info("response.create deferred: the conversation has an active response")
                self._release_request(requeue=True)
                return []
            self._release_request(requeue=False)
            actions = [Emit("error", ErrorEvent(code=code, message=detail, recoverable=True))]
            return actions + self._maybe_respond()
        if code == "response_cancel_not_active":
            log.debug("response.cancel raced the end of the response: %s", text)
            return []
        return [Emit("error", ErrorEvent(code=code, message=detail, recoverable=True))]

    def _on_speech_started(self, message: Frame, now: float) -> list[Action]:
        actions: list[Action] = [
            Emit(
                "speech-started", SpeechEvent(audio_ms=_int_or_none(message.get("audio_start_ms")))
            )
        ]
        if self.config.turn_detection.mode != "manual":
            self._user_turn_open = True
        actions.extend(self._barge_in(now))
        return actions

    def _barge_in(self, now: float) -> list[Action]:
        item = self._audio_item
        active = self._active
        playing = False
        if item is not None and not item.truncated:
            received_ms = item.wire_bytes / bytes_per_ms(self._out_wire)
            playing = item.response_id == active or (now - item.first_at) * 1000.0 < received_ms
        if active is None and not playing:
            return []
        response_id = active if active is not None else item.response_id if item else None
        actions: list[Action] = [Emit("interrupted", InterruptedEvent(response_id=response_id))]
        if response_id is not None:
            self._interrupted.add(response_id)
        if active is not None and not self.config.turn_detection.interrupt_response:
            # Cancel first: the truncate then refers to a finished item, whether or not the
            # server would have ended the response on its own because of the truncate.
            actions.append(
                Send(
                    {"type": "response.cancel", "event_id": self._next_id(), "response_id": active}
                )
            )
        if item is not None and playing and item.wire_bytes > 0:
            received_ms = item.wire_bytes / bytes_per_ms(self._out_wire)
            played_ms = max(0.0, (now - item.first_at) * 1000.0)
            item.truncated = True
            if item.response_id is not None:
                self._interrupted.add(item.response_id)
            actions.append(
                Send(
                    {
                        "type": "conversation.item.truncate",
                        "event_id": self._next_id(),
                        "item_id": item.item_id,
                        "content_index": item.content_index,
                        "audio_end_ms": int(min(received_ms, played_ms)),
                    }
                )
            )
        self._out_conv = AudioConverter(self._out_wire, self.config.output_audio)
        return actions

    def _on_speech_stopped(self, message: Frame, _now: float) -> list[Action]:
        if self._active is not None and not self.config.turn_detection.interrupt_response:
            # The server may not create a response while one is active; do not wait for it.
            self._user_turn_open = False
        return [
            Emit("speech-stopped", SpeechEvent(audio_ms=_int_or_none(message.get("audio_end_ms"))))
        ]

    def _on_committed(self, message: Frame, _now: float) -> list[Action]:
        item_id = _field(message, "item_id", str)
        self._uncommitted_bytes = 0
        self._entry("user", item_id)
        return []

    def _on_item_added(self, message: Frame, _now: float) -> list[Action]:
        item = _field(message, "item", dict)
        kind = item.get("type")
        if kind == "function_call_output":
            call = self._calls.get(str(item.get("call_id")))
            if call is not None:
                call.acked = True
        elif kind == "message" and item.get("role") == "user" and isinstance(item.get("id"), str):
            content = item.get("content") or []
            if any(isinstance(c, dict) and c.get("type") == "input_audio" for c in content):
                self._entry("user", item["id"])
        return []

    def _on_input_transcript_delta(self, message: Frame, _now: float) -> list[Action]:
        item_id = _field(message, "item_id", str)
        delta = _opt(message, "delta", str) or ""
        entry = self._entry("user", item_id)
        if not delta or entry.final_sent:
            return []
        entry.parts.append(delta)
        return [
            Emit(
                "transcript", TranscriptEvent(role="user", text=delta, final=False, item_id=item_id)
            )
        ]

    def _on_input_transcript_completed(self, message: Frame, _now: float) -> list[Action]:
        item_id = _field(message, "item_id", str)
        text = _field(message, "transcript", str)
        entry = self._entry("user", item_id)
        if entry.final_sent:
            return []
        entry.text = text
        entry.final_sent = True
        return [
            Emit("transcript", TranscriptEvent(role="user", text=text, final=True, item_id=item_id))
        ]

    def _on_input_transcript_failed(self, message: Frame, _now: float) -> list[Action]:
        error = _as_dict(message.get("error"))
        code = error.get("code") or error.get("type") or "transcription_failed"
        text = error.get("message") or "input audio transcription failed"
        return [
            Emit(
                "error",
                ErrorEvent(
                    code=str(code),
                    message=f"OpenAI input transcription of item {message.get('item_id')}: {text}",
                    recoverable=True,
                ),
            )
        ]

    def _on_response_created(self, message: Frame, _now: float) -> list[Action]:
        response_id = _field(_field(message, "response", dict), "id", str)
        self._active = response_id
        self._responses.setdefault(response_id, _Response(response_id))
        if self._requested is not None:
            self._requested = None  # the server answers requests in order: this one is ours
        else:
            self._user_turn_open = False  # the automatic response of the caller's turn
        # A response created after the tool outputs were added sees them: no follow-up owed.
        for response in self._responses.values():
            if (
                response.done
                and not response.covered
                and response.calls
                and all(
                    self._calls[c].state == "cancelled"
                    or (self._calls[c].state == "answered" and self._calls[c].acked)
                    for c in response.calls
                )
            ):
                response.covered = True
        self._prune()
        return []

    def _on_output_item_added(self, message: Frame, _now: float) -> list[Action]:
        item = _field(message, "item", dict)
        response_id = _opt(message, "response_id", str) or self._active
        response = (
            self._responses.setdefault(response_id, _Response(response_id)) if response_id else None
        )
        kind = item.get("type")
        item_id = item.get("id")
        if kind == "message" and isinstance(item_id, str):
            entry = self._entry("assistant", item_id)
            entry.response_id = response_id
            if response is not None and item_id not in response.items:
                response.items.append(item_id)
        elif kind == "function_call":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise ProviderProtocolError(f"function_call item without a call_id: {item!r}")
            name = item.get("name") if isinstance(item.get("name"), str) else ""
            self._register_call(call_id, name, response_id)
        return []

    def _register_call(self, call_id: str, name: str, response_id: str | None) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            call = _Call(call_id, name, response_id)
            self._calls[call_id] = call
            self._add_entry(_Entry("call", call_id))
            if response_id is not None:
                response = self._responses.setdefault(response_id, _Response(response_id))
                response.calls.append(call_id)
        elif name and not call.name:
            call.name = name
        return call

    def _on_audio_delta(self, message: Frame, now: float) -> list[Action]:
        item_id = _field(message, "item_id", str)
        response_id = _opt(message, "response_id", str)
        encoded = _field(message, "delta", str)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderProtocolError(f"audio delta is not valid base64: {exc}") from exc
        if response_id is not None and response_id in self._interrupted:
            return []  # trailing audio of an interrupted reply: playback already stopped
        item = self._audio_item
        if item is None or item.item_id != item_id:
            content_index = _int_or_none(message.get("content_index")) or 0
            item = _AudioItem(item_id, response_id, content_index, first_at=now)
            self._audio_item = item
        if item.truncated:
            return []
        item.wire_bytes += len(raw)
        self._audio_seen = True
        data = self._out_conv.convert(raw)
        if not data:
            return []
        return [
            Emit(
                "audio",
                AudioEvent(
                    data=data,
                    sample_rate=self.config.output_audio.sample_rate,
                    response_id=response_id,
                ),
            )
        ]

    def _on_audio_done(self, message: Frame, _now: float) -> list[Action]:
        response_id = _opt(message, "response_id", str)
        tail = self._out_conv.flush()
        if not tail or (response_id is not None and response_id in self._interrupted):
            return []
        return [
            Emit(
                "audio",
                AudioEvent(
                    data=tail,
                    sample_rate=self.config.output_audio.sample_rate,
                    response_id=response_id,
                ),
            )
        ]

    def _on_transcript_delta(self, message: Frame, _now: float) -> list[Action]:
        item_id = _field(message, "item_id", str)
        delta = _field(message, "delta", str)
        response_id = _opt(message, "response_id", str)
        entry = self._entry("assistant", item_id)
        if entry.final_sent or (response_id is not None and response_id in self._interrupted):
            return []
        entry.response_id = entry.response_id or response_id
        entry.parts.append(delta)
        if not delta or not self.config.output_transcription:
            return []
        return [
            Emit(
                "transcript",
                TranscriptEvent(role="assistant", text=delta, final=False, item_id=item_id),
            )
        ]

    def _on_transcript_done(self, message: Frame, _now: float) -> list[Action]:
        item_id = _field(message, "item_id", str)
        text = message.get("transcript", message.get("text"))
        if not isinstance(text, str):
            raise ProviderProtocolError(
                f"{message.get('type')!r} event has no string transcript/text: {text!r}"
            )
        response_id = _opt(message, "response_id", str)
        entry = self._entry("assistant", item_id)
        if entry.final_sent:
            return []
        interrupted = response_id is not None and response_id in self._interrupted
        if not interrupted:
            entry.text = text
        return self._final_assistant(entry)

    def _final_assistant(self, entry: _Entry) -> list[Action]:
        entry.final_sent = True
        text = entry.full_text()
        if not text or not self.config.output_transcription:
            return []
        return [
            Emit(
                "transcript",
                TranscriptEvent(role="assistant", text=text, final=True, item_id=entry.key),
            )
        ]

    def _finish_transcripts(self, response: _Response) -> list[Action]:
        actions: list[Action] = []
        for item_id in response.items:
            entry = self._entries.get(("assistant", item_id))
            if entry is not None and not entry.final_sent:
                actions.extend(self._final_assistant(entry))
        return actions

    def _on_arguments_done(self, message: Frame, _now: float) -> list[Action]:
        call_id = _field(message, "call_id", str)
        arguments = _field(message, "arguments", str)
        response_id = _opt(message, "response_id", str) or self._active
        name = _opt(message, "name", str) or ""
        call = self._register_call(call_id, name, response_id)
        if call.state != "streaming":
            return []
        call.arguments = arguments
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            return self._bad_arguments(call, f"not valid JSON ({exc})")
        if not isinstance(parsed, dict):
            return self._bad_arguments(call, f"a JSON {type(parsed).__name__}, not an object")
        call.state = "emitted"
        return [Emit("tool-call", ToolCallEvent(call_id=call_id, name=call.name, arguments=parsed))]

    def _bad_arguments(self, call: _Call, why: str) -> list[Action]:
        message = f"tool call {call.call_id} ({call.name}) has arguments that are {why}"
        call.arguments = "{}"
        call.state = "emitted"
        actions: list[Action] = [
            Emit(
                "error",
                ErrorEvent(code="invalid_tool_arguments", message=message, recoverable=True),
            )
        ]
        # Answer it ourselves so the model is not left waiting for a result.
        actions.extend(
            self.tool_responses(
                [
                    RealtimeToolResponse(
                        call_id=call.call_id,
                        output=f"the call's arguments were {why}; call the tool again",
                        is_error=True,
                    )
                ]
            )
        )
        return actions

    def _on_response_done(self, message: Frame, _now: float) -> list[Action]:
        body = _field(message, "response", dict)
        response_id = _field(body, "id", str)
        raw_status = body.get("status")
        status: Literal["completed", "cancelled", "failed", "incomplete"] = (
            raw_status if raw_status in _RESPONSE_STATUSES else "completed"
        )
        response = self._responses.setdefault(response_id, _Response(response_id))
        for item in body.get("output") or []:
            if isinstance(item, dict) and item.get("type") == "message":
                item_id = item.get("id")
                if isinstance(item_id, str) and item_id not in response.items:
                    response.items.append(item_id)
        response.done = True
        if self._active == response_id:
            self._active = None
        actions = self._finish_transcripts(response)
        if status == "cancelled":
            pending = []
            for call_id in response.calls:
                call = self._calls[call_id]
                if call.state == "emitted":
                    pending.append(call_id)
                if call.state in ("emitted", "streaming"):
                    call.state = "cancelled"
            if pending:
                actions.append(
                    Emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=pending))
                )
            # The caller's new turn gets its own response: no follow-up for this one.
            response.covered = True
        else:
            for call_id in response.calls:
                if self._calls[call_id].state == "streaming":
                    self._calls[call_id].state = "cancelled"
        if not response.calls:
            response.covered = True
        if status == "failed":
            error = _as_dict(_as_dict(body.get("status_details")).get("error"))
            code = str(error.get("code") or error.get("type") or "response_failed")
            reason = error.get("message") or code
            actions.append(
                Emit(
                    "error",
                    ErrorEvent(
                        code=code,
                        message=f"OpenAI response {response_id} failed: {reason}",
                        recoverable=True,
                    ),
                )
            )
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        actions.append(
            Emit(
                "response-done",
                ResponseDoneEvent(
                    response_id=response_id,
                    status=status,
                    usage=Usage(
                        input_tokens=_int_or_none(usage.get("input_tokens")) or 0,
                        output_tokens=_int_or_none(usage.get("output_tokens")) or 0,
                        total_tokens=_int_or_none(usage.get("total_tokens")) or 0,
                    )
                    if usage is not None
                    else None,
                ),
            )
        )
        actions.extend(self._maybe_respond())
        return actions

    # ------------------------------------------------------------------ response scheduling

    def _due_followups(self) -> list[_Response]:
        return [
            r
            for r in self._responses.values()
            if r.done
            and not r.covered
            and r.calls
            and all(self._calls[c].state in ("answered", "cancelled") for c in r.calls)
        ]

    def _maybe_respond(self) -> list[Action]:
        if (
            not self._live
            or self._active is not None
            or self._requested is not None
            or self._user_turn_open
        ):
            return []
        due = self._due_followups()
        if self._pending_requests:
            instruction = self._pending_requests.popleft()
            explicit = True
        elif due:
            instruction = None
            explicit = False
        else:
            return []
        for response in due:
            response.covered = True
        event_id = self._next_id()
        self._requested = _Request(event_id, instruction, explicit, [r.id for r in due])
        frame: Frame = {"type": "response.create", "event_id": event_id}
        if instruction is not None:
            frame["response"] = {"instructions": instruction}
        return [Send(frame)]

    def _release_request(self, *, requeue: bool) -> None:
        """Forget the in-flight ``response.create``.

        ``requeue``: what it was for is owed again (its connection died or another response
        won the race); otherwise it is given up (the server rejected it for good).
        """
        request = self._requested
        if request is None or not requeue:
            self._requested = None
            return
        self._requested = None
        if request.explicit:
            self._pending_requests.appendleft(request.instruction)
        for response_id in request.covers:
            response = self._responses.get(response_id)
            if response is not None:
                response.covered = False

    def _prune(self) -> None:
        finished = [
            rid
            for rid, r in self._responses.items()
            if r.done and r.covered and rid != self._active
        ]
        for rid in finished[:-8]:  # keep a few for late events
            del self._responses[rid]

    # ------------------------------------------------------------------ history

    def _entry(self, kind: Literal["user", "assistant"], item_id: str) -> _Entry:
        entry = self._entries.get((kind, item_id))
        if entry is None:
            entry = _Entry(kind, item_id)
            self._add_entry(entry)
        return entry

    def _add_entry(self, entry: _Entry) -> None:
        self._entries[(entry.kind, entry.key)] = entry
        self._history.append(entry)


_Handler = Callable[[OpenAITranslator, Frame, float], list[Action]]

_HANDLERS: dict[str, _Handler] = {
    "session.updated": OpenAITranslator._on_session_updated,
    "error": OpenAITranslator._on_error,
    "input_audio_buffer.speech_started": OpenAITranslator._on_speech_started,
    "input_audio_buffer.speech_stopped": OpenAITranslator._on_speech_stopped,
    "input_audio_buffer.committed": OpenAITranslator._on_committed,
    "conversation.item.added": OpenAITranslator._on_item_added,
    "conversation.item.done": OpenAITranslator._on_item_added,
    "conversation.item.input_audio_transcription.delta": (
        OpenAITranslator._on_input_transcript_delta
    ),
    "conversation.item.input_audio_transcription.completed": (
        OpenAITranslator._on_input_transcript_completed
    ),
    "conversation.item.input_audio_transcription.failed": (
        OpenAITranslator._on_input_transcript_failed
    ),
    "response.created": OpenAITranslator._on_response_created,
    "response.output_item.added": OpenAITranslator._on_output_item_added,
    "response.output_audio.delta": OpenAITranslator._on_audio_delta,
    "response.output_audio.done": OpenAITranslator._on_audio_done,
    "response.output_audio_transcript.delta": OpenAITranslator._on_transcript_delta,
    "response.output_audio_transcript.done": OpenAITranslator._on_transcript_done,
    "response.output_text.delta": OpenAITranslator._on_transcript_delta,
    "response.output_text.done": OpenAITranslator._on_transcript_done,
    "response.function_call_arguments.done": OpenAITranslator._on_arguments_done,
    "response.done": OpenAITranslator._on_response_done,
}
