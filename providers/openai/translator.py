"""OpenAI Realtime GA translator: wire JSON <-> ``protocol`` events, with no I/O.

:class:`OpenAITranslator` is a plain object and the one entry point of the translator.
``receive(message, now)`` takes one parsed server event and returns
:data:`~providers.translator.Action` s (events to emit, frames to send, handshake and update
outcomes, fatal errors); the command methods (``handshake_frames``, ``audio_frame``,
``tool_responses``, ``request_response``, ``update``) return the frames to send. Tests drive
it with recorded wire JSON and no socket. ``now`` is a monotonic time in seconds, used only to
estimate how much of a reply has been played when the caller barges in.

The translator is split by concern; this module is the facade and owns the session level:

- :mod:`.session`: the GA ``session`` object of a config and which fields an update sends;
- :mod:`.history`: the conversation kept for replay after a reconnect (``replay_items``) and
  seeded from another process (``import_items``);
- :mod:`.responses`: the response lifecycle and tool calls as transition tables, and barge-in;
- :mod:`.events`: the event state machine, the handlers of the conversation's server events;
- here: the handshake, in-place updates, and the routing of server errors.

Errors are matched to the client event that caused them by ``event_id`` (every control frame
carries one): a rejected handshake or update fails that call; a ``response.create`` that lost
the race to another response is sent again after it; ``response_cancel_not_active`` (our cancel
raced the natural end of the response) is only logged; everything else is a recoverable
``error`` event unless its code is in :data:`FATAL_ERROR_CODES`. Event names and payloads are
those of ``protocol/events.py``.
"""

from __future__ import annotations

import base64
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protocol.config import (
    AudioFormat,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
)
from protocol.errors import (
    ConfigRejectedError,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
)
from protocol.events import ErrorEvent
from providers.translator import Action, Emit, Frame, Send, Signal

from .events import BETA_ALIASES, HANDLERS, IGNORED_EVENTS, EventMachine, as_dict, require
from .session import (
    DEFAULT_TRANSCRIPTION_MODEL,
    PCM24K,
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


# ---------------------------------------------------------------------------- signals


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


@dataclass
class _PendingUpdate:
    previous: RealtimeSessionConfig
    config: RealtimeSessionConfig


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
        self.transcription_model = transcription_model
        self._ids = itertools.count(1)
        self._prefix = event_prefix
        self._events = EventMachine(
            config, next_id=self._next_id, replay_max_chars=replay_max_chars
        )
        self._handshake_id: str | None = None
        self._updates: dict[str, _PendingUpdate] = {}
        #: the last error the server sent while a handshake was pending (None when none)
        self.handshake_error: ProviderError | None = None

    # ------------------------------------------------------------------ introspection

    @property
    def config(self) -> RealtimeSessionConfig:
        """The session config in effect (an update applies at once; a rejected one reverts)."""
        return self._events.config

    @config.setter
    def config(self, config: RealtimeSessionConfig) -> None:
        self._events.config = config

    @property
    def replay_max_chars(self) -> int:
        return self._events.conversation.max_chars

    @replay_max_chars.setter
    def replay_max_chars(self, max_chars: int) -> None:
        self._events.conversation.max_chars = max_chars

    @property
    def active_response(self) -> str | None:
        """The id of the response in progress, if any."""
        return self._events.lifecycle.active

    @property
    def input_wire_format(self) -> AudioFormat:
        return wire_format(self.config.input_audio)

    def is_idle(self) -> bool:
        """Between turns: no response active, requested or owed, caller not mid-turn."""
        return self._events.lifecycle.is_idle()

    def history(self) -> list[tuple[str, str]]:
        """The conversation kept for replay as ``(kind, text)`` pairs, in order."""
        return self._events.conversation.pairs()

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
        conversation = self._events.conversation
        if reconnect or conversation.seeded:
            frames.extend(self.replay_frames())
            conversation.seeded = False
        return frames

    def update(self, update: RealtimeSessionConfigUpdate) -> UpdatePlan:
        """Plan an in-place update: only the changed fields go on the wire.

        A voice change after the model produced audio on this connection cannot be applied
        (the server would reject the whole update): it becomes a recoverable ``error`` event
        ``cannot_update_voice`` and the remaining changes are still sent.
        """
        previous = self.config
        playback = self._events.playback
        new, changed, refused = plan_update(previous, update, audio_seen=playback.seen)
        actions: list[Action] = [] if refused is None else [Emit("error", refused)]
        if new.output_audio != previous.output_audio and "output_audio" not in changed:
            playback.rebuild(new.output_audio)  # same wire format: only the conversion changes
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

    # ------------------------------------------------------------------ commands

    def audio_frame(self, chunk: bytes) -> Frame:
        """``input_audio_buffer.append`` for ``chunk`` (already in the wire format)."""
        return {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}

    def audio_pushed(self, nbytes: int) -> None:
        """Count input audio queued since the last commit (manual turn detection)."""
        self._events.uncommitted_bytes += nbytes

    def report_playback(self, response_id: str | None, played_ms: int, now: float) -> None:
        """The caller's player has played ``played_ms`` of ``response_id`` (barge-in uses it)."""
        self._events.playback.report(response_id, played_ms, now)

    def request_response(self, instruction: str | None) -> list[Action]:
        """Ask for a response; queued until no response is active (or owed to the server).

        With manual turn detection the input audio buffer is committed first when it holds at
        least 100 ms (the server rejects shorter commits).
        """
        return self._events.request_response(instruction)

    def tool_responses(self, responses: Iterable[RealtimeToolResponse]) -> list[Action]:
        """``function_call_output`` items now; the follow-up ``response.create`` when due."""
        return self._events.tool_responses(responses)

    # ------------------------------------------------------------------ connection lifecycle

    def reset_connection(self) -> list[Action]:
        """The connection is gone: close out the reply in flight and per-connection state.

        A reply cut by the connection loss gets its final transcript and a ``response-done``
        with status ``failed``; tool calls already announced stay pending (they are replayed,
        so their results can still be delivered); a ``response.create`` not yet answered is
        asked again on the new connection.
        """
        self._handshake_id = None
        return self._events.connection_lost()

    def after_handshake(self) -> list[Action]:
        """The connection is live: send what is owed (queued requests, tool follow-ups)."""
        return self._events.go_live()

    def filter_held(self, frames: list[Frame]) -> list[Frame]:
        """Of the frames a lost socket never took, keep those the new handshake did not cover.

        The handshake re-sent the whole config and replayed the conversation (with the tool
        outputs known then); responses are re-requested from state; truncates and cancels refer
        to the old connection. Kept: ``input_audio_buffer.commit`` (after the held audio) and
        tool outputs that arrived after the replay was built.
        """
        replayed = self._events.conversation.replayed_outputs
        kept: list[Frame] = []
        for frame in frames:
            kind = frame.get("type")
            if kind == "input_audio_buffer.commit":
                kept.append(frame)
            elif kind == "conversation.item.create":
                item = as_dict(frame.get("item"))
                if (
                    item.get("type") == "function_call_output"
                    and item.get("call_id") not in replayed
                ):
                    kept.append(frame)
        return kept

    def replay_items(self) -> list[dict[str, Any]]:
        """The conversation as GA conversation items (text messages, function calls and their
        outputs), oldest first, capped at ``replay_max_chars``."""
        return self._events.replay_items()

    def replay_frames(self) -> list[Frame]:
        """``conversation.item.create`` frames re-creating the conversation, oldest first."""
        return self._events.replay_frames()

    def import_items(self, items: list[dict[str, Any]]) -> None:
        """Seed the conversation from ``replay_items`` of another client (a takeover); the next
        handshake replays it. Raises ``ConfigError`` naming the first item it cannot use."""
        self._events.import_items(items)

    # ------------------------------------------------------------------ server events

    def receive(self, message: Frame, now: float) -> list[Action]:
        """Translate one server event; raise ``ProviderProtocolError`` if it is malformed."""
        kind = message.get("type")
        if not isinstance(kind, str):
            raise ProviderProtocolError(f"server event without a string 'type': {kind!r}")
        kind = BETA_ALIASES.get(kind, kind)
        if kind == "session.updated":
            return self._on_session_updated(message)
        if kind == "error":
            return self._on_error(message)
        handler = HANDLERS.get(kind)
        if handler is None:
            if kind not in IGNORED_EVENTS:
                log.debug("ignoring unknown server event %r", kind)
            return []
        return handler(self._events, message, now)

    def _on_session_updated(self, message: Frame) -> list[Action]:
        require(message, "session", dict)
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
                self._events.playback.rebuild(pending.config.output_audio)
            return [UpdateDone(event_id)]
        return []

    def _on_error(self, message: Frame) -> list[Action]:
        error = require(message, "error", dict)
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
        lifecycle = self._events.lifecycle
        request = lifecycle.request
        raced = code == "conversation_already_has_active_response"
        if request is not None and (event_id == request.event_id or (event_id is None and raced)):
            if raced:
                # Another response started first; ours goes out after that one is done.
                log.info("response.create deferred: the conversation has an active response")
                lifecycle.request_deferred()
                return []
            lifecycle.request_rejected()
            actions: list[Action] = [
                Emit("error", ErrorEvent(code=code, message=detail, recoverable=True))
            ]
            return actions + lifecycle.maybe_respond()
        if code == "response_cancel_not_active":
            log.debug("response.cancel raced the end of the response: %s", text)
            return []
        return [Emit("error", ErrorEvent(code=code, message=detail, recoverable=True))]
