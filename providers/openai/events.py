"""The OpenAI Realtime event state machine: server events of the conversation -> actions. No I/O.

:class:`EventMachine` reads every server event about the conversation (the caller's speech and
transcripts, responses, their items, audio, transcripts and tool calls) and returns the
:data:`~providers.translator.Action` s it implies, using the response lifecycle of
:mod:`.responses` and the conversation of :mod:`.history`. The session-level events
(``session.updated``, ``error``) are the facade's (:mod:`.translator`). Event names and payloads
are those of ``protocol/events.py``.

- Beta server event names (``response.audio.*``, ``response.audio_transcript.*``,
  ``response.text.*``, ``conversation.item.created``) are accepted as their GA twins.
- ``tool-call`` fires at ``response.function_call_arguments.done`` with parsed arguments;
  arguments that are not a JSON object produce a recoverable ``error`` event and an automatic
  error output for that call, so the model is never left waiting for it.
- Exactly one final assistant ``transcript`` per reply item (the whole text), also when the reply
  was cancelled; user transcripts are deltas then one final per item.
- A cancelled response's tool calls without a result become ``tool-call-cancelled``; their late
  results are dropped (logged).
- A malformed event raises ``ProviderProtocolError`` before it changes any state.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import orjson

from protocol.config import RealtimeSessionConfig, RealtimeToolResponse
from protocol.errors import ConfigError, ProviderProtocolError
from protocol.events import (
    AudioEvent,
    ErrorEvent,
    ResponseDoneEvent,
    SpeechEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    TranscriptEvent,
    Usage,
)
from providers.translator import Action, Emit, Frame, Send

from .history import Conversation, Entry
from .responses import AudioItem, Call, CallEvent, CallState, Playback, Response, ResponseLifecycle
from .session import bytes_per_ms, wire_format

__all__ = [
    "BETA_ALIASES",
    "HANDLERS",
    "IGNORED_EVENTS",
    "EventMachine",
    "as_dict",
    "int_or_none",
    "optional",
    "require",
]

log = logging.getLogger("voicegrid.openai")

#: Beta server event names and their GA twins.
BETA_ALIASES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}

#: Server events that need nothing (an unknown event is ignored too, and logged).
IGNORED_EVENTS = frozenset(
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


# ---------------------------------------------------------------------------- field readers


def require(message: Frame, key: str, kind: type) -> Any:
    """``message[key]``, which must be a ``kind`` (``ProviderProtocolError`` if not)."""
    value = message.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProviderProtocolError(
            f"{message.get('type')!r} event has {key}={value!r}; expected a {kind.__name__}"
        )
    return value


def optional(message: Frame, key: str, kind: type) -> Any:
    """``message[key]`` or None; when present it must be a ``kind``."""
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise ProviderProtocolError(
            f"{message.get('type')!r} event has {key}={value!r}; expected a {kind.__name__}"
        )
    return value


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------- the machine


class EventMachine:
    """The conversation state of one OpenAI session and the handlers of its server events.

    ``config`` is the session config in effect (the facade replaces it on updates);
    ``next_id`` makes the ``event_id`` of every client frame.
    """

    def __init__(
        self, config: RealtimeSessionConfig, *, next_id: Callable[[], str], replay_max_chars: int
    ) -> None:
        self.config = config
        self._next_id = next_id
        self.lifecycle = ResponseLifecycle(next_id)
        self.conversation = Conversation(replay_max_chars)
        self.playback = Playback(config.output_audio)
        self.uncommitted_bytes = 0  # input audio queued since the last commit

    # ------------------------------------------------------------------ commands

    def request_response(self, instruction: str | None) -> list[Action]:
        """Ask for a response; queued until no response is active (or owed to the server).

        With manual turn detection the input audio buffer is committed first when it holds at
        least 100 ms (the server rejects shorter commits).
        """
        actions: list[Action] = []
        min_bytes = int(100 * bytes_per_ms(wire_format(self.config.input_audio)))
        if self.config.turn_detection.mode == "manual" and self.uncommitted_bytes >= min_bytes:
            actions.append(Send({"type": "input_audio_buffer.commit", "event_id": self._next_id()}))
            self.uncommitted_bytes = 0
        actions.extend(self.lifecycle.ask(instruction))
        return actions

    def tool_responses(self, responses: Iterable[RealtimeToolResponse]) -> list[Action]:
        """``function_call_output`` items now; the follow-up ``response.create`` when due."""
        # Encode everything first: a bad output raises before any state changes.
        encoded = [(response, _encode_output(response)) for response in responses]
        actions: list[Action] = []
        for response, output in encoded:
            call = self.lifecycle.calls.get(response.call_id)
            if call is not None and call.state is CallState.CANCELLED:
                log.info(
                    "dropping the result of cancelled tool call %s (%s)", call.call_id, call.name
                )
                continue
            if call is not None and call.state is CallState.ANSWERED:
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
            self.lifecycle.answered(response.call_id, response.name)
            self.conversation.add(Entry("output", response.call_id, text=output))
        actions.extend(self.lifecycle.maybe_respond())
        return actions

    def connection_lost(self) -> list[Action]:
        """Close out the reply the lost connection cut and the per-connection state.

        The cut reply gets its final transcript and a ``response-done`` with status ``failed``;
        tool calls already announced stay pending (they are replayed, so their results can
        still be delivered); a ``response.create`` not yet answered is asked again on the new
        connection.
        """
        cut_id, cut = self.lifecycle.connection_lost()
        actions: list[Action] = []
        if cut is not None:
            actions.extend(self._finish_transcripts(cut))
        if cut_id is not None:
            actions.append(
                Emit("response-done", ResponseDoneEvent(response_id=cut_id, status="failed"))
            )
        self.playback.item = None
        self.playback.seen = False
        self.playback.restart(self.config.output_audio)
        self.uncommitted_bytes = 0
        return actions

    def go_live(self) -> list[Action]:
        """The connection is live: send what is owed (queued requests, tool follow-ups)."""
        self.lifecycle.live = True
        return self.lifecycle.maybe_respond()

    # ------------------------------------------------------------------ replay and import

    def replay_items(self) -> list[dict[str, Any]]:
        return self.conversation.items(self.lifecycle.calls)

    def replay_frames(self) -> list[Frame]:
        """``conversation.item.create`` frames re-creating the conversation, oldest first."""
        items = self.replay_items()
        self.conversation.replayed_outputs = {
            i["call_id"] for i in items if i["type"] == "function_call_output"
        }
        for call in self.lifecycle.calls.values():
            if call.state is CallState.ANSWERED:
                call.acked = True  # the replayed outputs precede any later response
        return [
            {"type": "conversation.item.create", "event_id": self._next_id(), "item": item}
            for item in items
        ]

    def import_items(self, items: list[dict[str, Any]]) -> None:
        """Seed the conversation from another client's ``replay_items`` (see the facade).

        As on a live connection, a repeated call or output is ignored and an output for an
        unknown call is dropped.
        """
        for index, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "message" and item.get("role") in ("user", "assistant"):
                content = item.get("content")
                first = content[0] if isinstance(content, list) and content else None
                text = first.get("text") if isinstance(first, dict) else None
                if isinstance(text, str):
                    entry = Entry(item["role"], f"imported:{index}", text=text, final_sent=True)
                    self.conversation.add(entry)
                    continue
            elif kind == "function_call" and all(
                isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")
            ):
                call = self._register_call(item["call_id"], item["name"], None)
                if call.state is CallState.STREAMING:
                    call.arguments = item["arguments"]
                    call.to(CallEvent.ARGUMENTS)
                continue
            elif kind == "function_call_output" and all(
                isinstance(item.get(k), str) for k in ("call_id", "output")
            ):
                answered = self.lifecycle.calls.get(item["call_id"])
                if answered is not None and answered.state is CallState.EMITTED:
                    answered.to(CallEvent.ANSWER)
                    self.conversation.add(Entry("output", answered.call_id, text=item["output"]))
                continue
            raise ConfigError(
                f"imported conversation item {index} is not a text message, function_call or "
                f"function_call_output: {item!r:.200}"
            )
        self.conversation.seeded = bool(items)

    # ------------------------------------------------------------------ caller's turn

    def on_speech_started(self, message: Frame, now: float) -> list[Action]:
        audio_ms = int_or_none(message.get("audio_start_ms"))
        actions: list[Action] = [Emit("speech-started", SpeechEvent(audio_ms=audio_ms))]
        turns = self.config.turn_detection
        if turns.mode != "manual":
            self.lifecycle.caller_turn_open = True
        actions.extend(
            self.lifecycle.barge_in(
                now, self.playback, self.config.output_audio, cancel=not turns.interrupt_response
            )
        )
        return actions

    def on_speech_stopped(self, message: Frame, _now: float) -> list[Action]:
        lifecycle = self.lifecycle
        if lifecycle.active is not None and not self.config.turn_detection.interrupt_response:
            # The server may not create a response while one is active; do not wait for it.
            lifecycle.caller_turn_open = False
        audio_ms = int_or_none(message.get("audio_end_ms"))
        return [Emit("speech-stopped", SpeechEvent(audio_ms=audio_ms))]

    def on_committed(self, message: Frame, _now: float) -> list[Action]:
        item_id = require(message, "item_id", str)
        self.uncommitted_bytes = 0
        self.conversation.message("user", item_id)
        return []

    def on_item_added(self, message: Frame, _now: float) -> list[Action]:
        item = require(message, "item", dict)
        kind = item.get("type")
        if kind == "function_call_output":
            call = self.lifecycle.calls.get(str(item.get("call_id")))
            if call is not None:
                call.acked = True
        elif kind == "message" and item.get("role") == "user" and isinstance(item.get("id"), str):
            content = item.get("content") or []
            if any(isinstance(c, dict) and c.get("type") == "input_audio" for c in content):
                self.conversation.message("user", item["id"])
        return []

    def on_input_transcript_delta(self, message: Frame, _now: float) -> list[Action]:
        item_id = require(message, "item_id", str)
        delta = optional(message, "delta", str) or ""
        entry = self.conversation.message("user", item_id)
        if not delta or entry.final_sent:
            return []
        entry.parts.append(delta)
        return [_transcript("user", delta, final=False, item_id=item_id)]

    def on_input_transcript_completed(self, message: Frame, _now: float) -> list[Action]:
        item_id = require(message, "item_id", str)
        text = require(message, "transcript", str)
        entry = self.conversation.message("user", item_id)
        if entry.final_sent:
            return []
        entry.text = text
        entry.final_sent = True
        return [_transcript("user", text, final=True, item_id=item_id)]

    def on_input_transcript_failed(self, message: Frame, _now: float) -> list[Action]:
        error = as_dict(message.get("error"))
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

    # ------------------------------------------------------------------ responses

    def on_response_created(self, message: Frame, _now: float) -> list[Action]:
        response_id = require(require(message, "response", dict), "id", str)
        self.lifecycle.created(response_id)
        return []

    def on_output_item_added(self, message: Frame, _now: float) -> list[Action]:
        item = require(message, "item", dict)
        response_id = optional(message, "response_id", str) or self.lifecycle.active
        kind = item.get("type")
        item_id = item.get("id")
        if kind == "function_call":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise ProviderProtocolError(f"function_call item without a call_id: {item!r}")
            name = item.get("name") if isinstance(item.get("name"), str) else ""
            self._register_call(call_id, name, response_id)
            return []
        response = self.lifecycle.response(response_id) if response_id else None
        if kind == "message" and isinstance(item_id, str):
            entry = self.conversation.message("assistant", item_id)
            entry.response_id = response_id
            if response is not None and item_id not in response.items:
                response.items.append(item_id)
        return []

    def on_audio_delta(self, message: Frame, now: float) -> list[Action]:
        item_id = require(message, "item_id", str)
        response_id = optional(message, "response_id", str)
        encoded = require(message, "delta", str)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderProtocolError(f"audio delta is not valid base64: {exc}") from exc
        if self.lifecycle.was_interrupted(response_id):
            return []  # trailing audio of an interrupted reply: playback already stopped
        playback = self.playback
        item = playback.item
        if item is None or item.item_id != item_id:
            content_index = int_or_none(message.get("content_index")) or 0
            item = playback.item = AudioItem(item_id, response_id, content_index, first_at=now)
        if item.truncated:
            return []
        item.wire_bytes += len(raw)
        playback.seen = True
        return self._audio(playback.converter.convert(raw), response_id)

    def on_audio_done(self, message: Frame, _now: float) -> list[Action]:
        response_id = optional(message, "response_id", str)
        tail = self.playback.converter.flush()
        if self.lifecycle.was_interrupted(response_id):
            return []
        return self._audio(tail, response_id)

    def _audio(self, data: bytes, response_id: str | None) -> list[Action]:
        if not data:
            return []
        sample_rate = self.config.output_audio.sample_rate
        return [
            Emit("audio", AudioEvent(data=data, sample_rate=sample_rate, response_id=response_id))
        ]

    def on_transcript_delta(self, message: Frame, _now: float) -> list[Action]:
        item_id = require(message, "item_id", str)
        delta = require(message, "delta", str)
        response_id = optional(message, "response_id", str)
        entry = self.conversation.message("assistant", item_id)
        if entry.final_sent or self.lifecycle.was_interrupted(response_id):
            return []
        entry.response_id = entry.response_id or response_id
        entry.parts.append(delta)
        if not delta or not self.config.output_transcription:
            return []
        return [_transcript("assistant", delta, final=False, item_id=item_id)]

    def on_transcript_done(self, message: Frame, _now: float) -> list[Action]:
        item_id = require(message, "item_id", str)
        text = message.get("transcript", message.get("text"))
        if not isinstance(text, str):
            raise ProviderProtocolError(
                f"{message.get('type')!r} event has no string transcript/text: {text!r}"
            )
        response_id = optional(message, "response_id", str)
        entry = self.conversation.message("assistant", item_id)
        if entry.final_sent:
            return []
        if not self.lifecycle.was_interrupted(response_id):
            entry.text = text
        return self._final_assistant(entry)

    def _final_assistant(self, entry: Entry) -> list[Action]:
        entry.final_sent = True
        text = entry.full_text()
        if not text or not self.config.output_transcription:
            return []
        return [_transcript("assistant", text, final=True, item_id=entry.key)]

    def _finish_transcripts(self, response: Response) -> list[Action]:
        actions: list[Action] = []
        for item_id in response.items:
            entry = self.conversation.find("assistant", item_id)
            if entry is not None and not entry.final_sent:
                actions.extend(self._final_assistant(entry))
        return actions

    def on_arguments_done(self, message: Frame, _now: float) -> list[Action]:
        call_id = require(message, "call_id", str)
        arguments = require(message, "arguments", str)
        response_id = optional(message, "response_id", str) or self.lifecycle.active
        name = optional(message, "name", str) or ""
        call = self._register_call(call_id, name, response_id)
        if call.state is not CallState.STREAMING:
            return []
        call.arguments = arguments
        call.to(CallEvent.ARGUMENTS)
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            return self._bad_arguments(call, f"not valid JSON ({exc})")
        if not isinstance(parsed, dict):
            return self._bad_arguments(call, f"a JSON {type(parsed).__name__}, not an object")
        return [Emit("tool-call", ToolCallEvent(call_id=call_id, name=call.name, arguments=parsed))]

    def _bad_arguments(self, call: Call, why: str) -> list[Action]:
        message = f"tool call {call.call_id} ({call.name}) has arguments that are {why}"
        call.arguments = "{}"
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

    def on_response_done(self, message: Frame, _now: float) -> list[Action]:
        body = require(message, "response", dict)
        response_id = require(body, "id", str)
        raw_status = body.get("status")
        status: Literal["completed", "cancelled", "failed", "incomplete"] = (
            raw_status if raw_status in _RESPONSE_STATUSES else "completed"
        )
        response = self.lifecycle.response(response_id)
        for item in body.get("output") or []:
            if isinstance(item, dict) and item.get("type") == "message":
                item_id = item.get("id")
                if isinstance(item_id, str) and item_id not in response.items:
                    response.items.append(item_id)
        _, pending = self.lifecycle.finished(response_id, cancelled=status == "cancelled")
        actions = self._finish_transcripts(response)
        if pending:
            actions.append(Emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=pending)))
        if status == "failed":
            error = as_dict(as_dict(body.get("status_details")).get("error"))
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
                        input_tokens=int_or_none(usage.get("input_tokens")) or 0,
                        output_tokens=int_or_none(usage.get("output_tokens")) or 0,
                        total_tokens=int_or_none(usage.get("total_tokens")) or 0,
                    )
                    if usage is not None
                    else None,
                ),
            )
        )
        actions.extend(self.lifecycle.maybe_respond())
        return actions

    # ------------------------------------------------------------------ helpers

    def _register_call(self, call_id: str, name: str, response_id: str | None) -> Call:
        call, new = self.lifecycle.register_call(call_id, name, response_id)
        if new:
            self.conversation.add(Entry("call", call_id))
        return call


def _transcript(
    role: Literal["user", "assistant"], text: str, *, final: bool, item_id: str
) -> Emit:
    return Emit("transcript", TranscriptEvent(role=role, text=text, final=final, item_id=item_id))


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


_Handler = Callable[[EventMachine, Frame, float], list[Action]]

#: The conversation's server events (GA names) and their handlers.
HANDLERS: dict[str, _Handler] = {
    "input_audio_buffer.speech_started": EventMachine.on_speech_started,
    "input_audio_buffer.speech_stopped": EventMachine.on_speech_stopped,
    "input_audio_buffer.committed": EventMachine.on_committed,
    "conversation.item.added": EventMachine.on_item_added,
    "conversation.item.done": EventMachine.on_item_added,
    "conversation.item.input_audio_transcription.delta": EventMachine.on_input_transcript_delta,
    "conversation.item.input_audio_transcription.completed": (
        EventMachine.on_input_transcript_completed
    ),
    "conversation.item.input_audio_transcription.failed": EventMachine.on_input_transcript_failed,
    "response.created": EventMachine.on_response_created,
    "response.output_item.added": EventMachine.on_output_item_added,
    "response.output_audio.delta": EventMachine.on_audio_delta,
    "response.output_audio.done": EventMachine.on_audio_done,
    "response.output_audio_transcript.delta": EventMachine.on_transcript_delta,
    "response.output_audio_transcript.done": EventMachine.on_transcript_done,
    "response.output_text.delta": EventMachine.on_transcript_delta,
    "response.output_text.done": EventMachine.on_transcript_done,
    "response.function_call_arguments.done": EventMachine.on_arguments_done,
    "response.done": EventMachine.on_response_done,
}
