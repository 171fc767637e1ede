"""``OpenAISimulator``: a loopback server speaking the OpenAI Realtime GA WebSocket protocol.

Clients connect exactly as to ``wss://api.openai.com/v1/realtime?model=...`` (Azure GA path
``/openai/v1/realtime`` too); only the URL differs. Behaviour follows
``shared/reference/openai-realtime.md``:

- Upgrade: ``Authorization: Bearer <key>`` or ``api-key: <key>`` is required. A missing key, or
  a key other than ``script.api_key`` when that is set, is refused with **HTTP 401** and an
  OpenAI-style JSON error body (``invalid_api_key`` for a wrong key); a missing ``model`` query
  gets HTTP 400. An ``OpenAI-Beta`` header is accepted at HTTP level and then answered with an
  ``error`` event ``beta_api_shape_disabled`` and close code 4000.
- ``session.created`` first (the full GA session), ``session.update`` validated like the real
  service (see ``openai_schema``) and applied as a partial update, answered with
  ``session.updated`` (full session); voice change after assistant audio ->
  ``cannot_update_voice``.
- Input audio in the declared format (PCM16 24 kHz, or G.711 at 8 kHz decoded with
  ``protocol.audio``), energy VAD -> ``speech_started`` / ``speech_stopped`` / ``committed`` /
  user item ``added``/``done`` / input transcription / automatic response; manual commit/clear.
- Responses in the verified event order (``rate_limits.updated`` just before
  ``response.created``), paced by ``script.speed``; tool calls; barge-in
  cancellation (``turn_detected``), ``response.cancel`` (``client_cancelled``), truncation
  checked against the audio generated, conversation item create/delete/retrieve.
- A malformed client frame (binary, not JSON, no or unknown ``type``, bad fields) gets an
  ``error`` event (``invalid_request_error``); the connection stays up.

Simulator-specific choices where the real service is not documented: a binary frame gets code
``invalid_frame``; unknown item ids get ``invalid_value`` with ``param`` naming the field;
``output_audio_buffer.clear`` (WebRTC/SIP only) gets ``invalid_value``; input transcription
events are sent right after the user item, before the response.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.http11 import Request

from protocol.audio import decode_to_pcm16

from .base import BaseSimulator, HttpRejection, SessionHandler, SimConnection
from .model import (
    ConversationItem,
    Decision,
    SimScript,
    SpeakDecision,
    ToolCallDecision,
    encoded_chunks,
    split_transcript,
)
from .openai_schema import Problem, check_client_event, validate_server_event

__all__ = ["OpenAISimulator"]

logger = logging.getLogger(__name__)

_PATHS = ("/v1/realtime", "/openai/v1/realtime")
DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Act like a human, but remember that you aren't "
    "a human and that you can't do human things in the real world."
)
SESSION_CAP_REASON = "Your session hit the maximum duration of 60 minutes."

# wire format type -> (protocol.audio encoding, sample rate)
_FORMATS: dict[str, tuple[str, int]] = {
    "audio/pcm": ("pcm16", 24000),
    "audio/pcmu": ("mulaw", 8000),
    "audio/pcma": ("alaw", 8000),
}


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (sent frames are recorded, so never share mutable parts)."""
    return orjson.loads(orjson.dumps(value))


def _turn_detection_defaults(kind: str, silence_ms: int) -> dict[str, Any]:
    if kind == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": silence_ms,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def _default_session(model: str, script: SimScript, session_id: str) -> dict[str, Any]:
    cap = script.max_session_s if script.max_session_s is not None else 3600
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time() + cap),
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _turn_detection_defaults("server_vad", script.silence_ms),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
        "include": None,
    }


# session keys whose value replaces the old one as a whole (the rest merge recursively)
_REPLACED = {
    "format",
    "turn_detection",
    "transcription",
    "noise_reduction",
    "tools",
    "tool_choice",
    "tracing",
    "truncation",
    "prompt",
    "include",
    "voice",
    "reasoning",
    "output_modalities",
}


def _merge(current: dict[str, Any], update: dict[str, Any], silence_ms: int) -> None:
    for key, value in update.items():
        if (
            key in _REPLACED
            or not isinstance(value, dict)
            or not isinstance(current.get(key), dict)
        ):
            value = _copy(value)
            if key == "turn_detection" and isinstance(value, dict):
                value = {**_turn_detection_defaults(value["type"], silence_ms), **value}
            elif key == "format" and value.get("type") == "audio/pcm":
                value.setdefault("rate", 24000)
            current[key] = value
        else:
            _merge(current[key], value, silence_ms)


def _tool_choice_name(choice: Any) -> str | None:
    if isinstance(choice, dict):
        name = choice.get("name")
        return name if isinstance(name, str) else "auto"
    return choice if isinstance(choice, str) else "auto"


@dataclass
class _Response:
    """One model response in flight (owned by its streaming task)."""

    id: str
    decision: Decision
    modalities: list[str]
    in_conversation: bool
    metadata: Any
    voice: Any
    out_format: dict[str, Any]
    cancel_reason: str | None = None
    wake: asyncio.Future[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    output: list[dict[str, Any]] = field(default_factory=list)
    item_ids: set[str] = field(default_factory=set)
    output_text: str = ""
    output_audio_ms: float = 0.0

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            if self.wake is not None and not self.wake.done():
                self.wake.set_result(None)


class _OpenAISession(SessionHandler):
    """The OpenAI Realtime GA protocol on one connection."""

    simulator: OpenAISimulator

    def __init__(self, simulator: OpenAISimulator, conn: SimConnection) -> None:
        super().__init__(simulator, conn)
        self.script = simulator.script
        self.model = conn.model
        self._prefix = secrets.token_hex(4)
        self._counter = 0
        self.model.id_factory = self.new_id
        self.session = _default_session(
            conn.query.get("model", "gpt-realtime"), self.script, self.new_id("sess")
        )
        self.active: _Response | None = None
        self.audio_generated = False
        self.input_ms_total = 0.0  # all audio appended during the session
        self.buffer_ms = 0.0  # audio in the uncommitted input buffer
        self.buffer_item_id: str | None = None
        self._vad_offset_ms = 0.0
        self._configure_input()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_request,
            "input_audio_buffer.clear": self._clear,
            "output_audio_buffer.clear": self._output_clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # ---- ids and sending ----------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._prefix}{self._counter:08x}"

    async def send(self, kind: str, **fields: Any) -> None:
        await self.conn.send_json({"type": kind, "event_id": self.new_id("event"), **fields})

    async def error(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        *,
        client_event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        await self.send(
            "error",
            error={
                "type": error_type,
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id,
            },
        )

    async def problem(self, problem: Problem, frame: dict[str, Any]) -> None:
        event_id = frame.get("event_id")
        await self.error(
            problem.code,
            problem.message,
            problem.param,
            client_event_id=event_id if isinstance(event_id, str) else None,
        )

    # ---- lifecycle --------------------------------------------------------------------------

    async def on_open(self) -> None:
        if "openai-beta" in self.conn.request_headers:
            await self.error(
                "beta_api_shape_disabled",
                "The Realtime API beta interface is disabled for this endpoint; remove the "
                "'OpenAI-Beta: realtime=v1' header and use the GA session shape.",
            )
            await self.conn.close(4000, "beta_api_shape_disabled")
            return
        await self.send("session.created", session=_copy(self.session))
        if self.script.max_session_s is not None:
            self.conn.spawn(self._session_cap(self.script.max_session_s), name="session-cap")

    async def _session_cap(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.conn.close(1001, SESSION_CAP_REASON)

    async def on_close(self) -> None:
        if self.active is not None:
            self.active.cancel("client_cancelled")

    async def on_message(self, raw: str | bytes, frame: dict[str, Any] | None) -> None:
        if isinstance(raw, bytes):
            await self.error(
                "invalid_frame",
                "Binary WebSocket frames are not supported; send each event as a JSON text frame.",
            )
            return
        if frame is None:
            await self.error(
                "invalid_json",
                "We could not parse the JSON body of your request. Expected a JSON object with "
                "a 'type' field.",
            )
            return
        problem = check_client_event(frame)
        if problem is not None:
            await self.problem(problem, frame)
            return
        await self._handlers[frame["type"]](frame)

    # ---- session ----------------------------------------------------------------------------

    @property
    def _input(self) -> dict[str, Any]:
        value: dict[str, Any] = self.session["audio"]["input"]
        return value

    @property
    def _output(self) -> dict[str, Any]:
        value: dict[str, Any] = self.session["audio"]["output"]
        return value

    def _configure_input(self) -> None:
        encoding, rate = _FORMATS[self._input["format"]["type"]]
        self.in_encoding, self.in_rate = encoding, rate
        detection = self._input["turn_detection"]
        self.vad = None
        if detection is not None:
            threshold = detection.get("threshold", 0.5)
            silence = detection.get("silence_duration_ms", self.script.silence_ms)
            if detection["type"] == "semantic_vad":
                threshold, silence = 0.5, self.script.silence_ms
            self.vad = self.model.new_vad(rate, max(threshold, 0.01) / 0.5, silence)
            self._vad_offset_ms = self.input_ms_total

    async def _session_update(self, frame: dict[str, Any]) -> None:
        update = frame["session"]
        model = update.get("model")
        if model is not None and model != self.session["model"]:
            await self.error(
                "invalid_value",
                f"Invalid value: '{model}'. The model of a session cannot change "
                f"(currently '{self.session['model']}').",
                "session.model",
                client_event_id=frame.get("event_id"),
            )
            return
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and voice != self._output.get("voice") and self.audio_generated:
            await self.error(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                client_event_id=frame.get("event_id"),
            )
            return
        old_input = _copy(self._input)
        _merge(self.session, update, self.script.silence_ms)
        new_input = self._input
        if (
            old_input["format"] != new_input["format"]
            or old_input["turn_detection"] != new_input["turn_detection"]
        ):
            self._configure_input()
        await self.send("session.updated", session=_copy(self.session))

    # ---- input audio ------------------------------------------------------------------------

    async def _append(self, frame: dict[str, Any]) -> None:
        try:
            # what base64.b64decode(validate=True) does, without its wrapper (per input frame)
            data = binascii.a2b_base64(frame["audio"], strict_mode=True)
        except (binascii.Error, ValueError):
            await self.error(
                "invalid_value",
                "Invalid 'audio': expected base64-encoded audio bytes.",
                "audio",
                client_event_id=frame.get("event_id"),
            )
            return
        if self.in_encoding == "pcm16" and len(data) % 2:
            await self.error(
                "invalid_value",
                f"Invalid 'audio': PCM16 audio must hold whole 16-bit samples, got {len(data)} "
                "bytes.",
                "audio",
                client_event_id=frame.get("event_id"),
            )
            return
        samples = decode_to_pcm16(data, self.in_encoding)
        # PCM16 input already is the little-endian bytes: no copy
        pcm = data if self.in_encoding == "pcm16" else samples.astype("<i2").tobytes()
        self.conn.add_audio_in(pcm)
        duration = samples.size * 1000.0 / self.in_rate
        self.input_ms_total += duration
        self.buffer_ms += duration
        if self.vad is None:
            return
        for event in self.vad.feed(samples):
            position = int(self._vad_offset_ms + event.audio_ms)
            if event.kind == "start":
                await self._speech_started(position)
            else:
                await self._speech_stopped(position)

    async def _speech_started(self, position: int) -> None:
        self.buffer_item_id = self.new_id("item")
        await self.send(
            "input_audio_buffer.speech_started",
            audio_start_ms=position,
            item_id=self.buffer_item_id,
        )
        detection = self._input["turn_detection"] or {}
        if self.active is not None and detection.get("interrupt_response", True):
            self.active.cancel("turn_detected")

    async def _speech_stopped(self, position: int) -> None:
        item_id = self.buffer_item_id or self.new_id("item")
        await self.send("input_audio_buffer.speech_stopped", audio_end_ms=position, item_id=item_id)
        await self._commit(item_id)
        detection = self._input["turn_detection"] or {}
        if not detection.get("create_response", True):
            return
        active = self.active
        if active is not None:
            if active.cancel_reason is None:
                return  # interrupt_response is off and the model is still talking
            await active.finished.wait()
        await self._start_response(None)

    async def _commit(self, item_id: str) -> None:
        conversation = self.model.conversation
        previous = conversation.last_id()
        conversation.add(
            ConversationItem(
                id=item_id,
                kind="message",
                role="user",
                text=self.script.user_transcript,
                audio=True,
            )
        )
        self.model.commit_user_turn()
        self.simulator.notify()
        self.buffer_ms = 0.0
        self.buffer_item_id = None
        await self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
            "object": "realtime.item",
        }
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=_copy(item))
        if self._input.get("transcription") is not None:
            await self._transcribe(item_id)

    async def _transcribe(self, item_id: str) -> None:
        text = self.script.user_transcript
        for delta in split_transcript(text):
            await self.send(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=delta,
            )
        tokens = max(1, math.ceil(len(text) / 4))
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=text,
            usage={
                "type": "tokens",
                "input_tokens": tokens * 2,
                "output_tokens": tokens,
                "total_tokens": tokens * 3,
                "input_token_details": {"audio_tokens": tokens * 2, "text_tokens": 0},
            },
        )

    async def _commit_request(self, frame: dict[str, Any]) -> None:
        if self.buffer_ms < 100:
            await self.error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {self.buffer_ms:.2f}ms of audio.",
                client_event_id=frame.get("event_id"),
            )
            return
        if self.vad is not None:
            self.vad.reset()
        await self._commit(self.buffer_item_id or self.new_id("item"))

    async def _clear(self, frame: dict[str, Any]) -> None:
        self.buffer_ms = 0.0
        self.buffer_item_id = None
        if self.vad is not None:
            self.vad.reset()
        await self.send("input_audio_buffer.cleared")

    async def _output_clear(self, frame: dict[str, Any]) -> None:
        await self.error(
            "invalid_value",
            "output_audio_buffer.clear is only supported on WebRTC and SIP connections.",
            "type",
            client_event_id=frame.get("event_id"),
        )

    # ---- conversation items -------------------------------------------------------------------

    async def _item_create(self, frame: dict[str, Any]) -> None:
        item = _copy(frame["item"])
        event_id = frame.get("event_id")
        conversation = self.model.conversation
        item_id = item.get("id") or self.new_id("item")
        if conversation.get(item_id) is not None:
            await self.error(
                "invalid_value",
                f"Invalid value: an item with id '{item_id}' already exists.",
                "item.id",
                client_event_id=event_id,
            )
            return
        memory = _memory_item(item_id, item)
        try:
            previous = conversation.add(memory, frame.get("previous_item_id"))
        except KeyError:
            await self.error(
                "invalid_value",
                f"Invalid value: previous_item_id '{frame.get('previous_item_id')}' does not "
                "exist in the conversation.",
                "previous_item_id",
                client_event_id=event_id,
            )
            return
        self.simulator.notify()
        item.update(id=item_id, status="completed", object="realtime.item")
        for part in item.get("content", []):
            if part.get("type") == "input_audio":
                part.pop("audio", None)
                part.setdefault("transcript", None)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=_copy(item))

    async def _item_delete(self, frame: dict[str, Any]) -> None:
        item_id = frame["item_id"]
        if not self.model.conversation.delete(item_id):
            await self._no_item(item_id, frame)
            return
        self.simulator.notify()
        await self.send("conversation.item.deleted", item_id=item_id)

    async def _item_retrieve(self, frame: dict[str, Any]) -> None:
        memory = self.model.conversation.get(frame["item_id"])
        if memory is None:
            await self._no_item(frame["item_id"], frame)
            return
        await self.send("conversation.item.retrieved", item=_item_json(memory))

    async def _no_item(self, item_id: str, frame: dict[str, Any]) -> None:
        await self.error(
            "invalid_value",
            f"Invalid value: item_id '{item_id}' does not exist in the conversation.",
            "item_id",
            client_event_id=frame.get("event_id"),
        )

    async def _item_truncate(self, frame: dict[str, Any]) -> None:
        event_id = frame.get("event_id")
        item_id, audio_end_ms = frame["item_id"], frame["audio_end_ms"]
        memory = self.model.conversation.get(item_id)
        if memory is None:
            await self._no_item(item_id, frame)
            return
        if not (memory.role == "assistant" and memory.audio and memory.audio_ms > 0):
            await self.error(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                client_event_id=event_id,
            )
            return
        if frame["content_index"] != 0:
            await self.error(
                "invalid_value",
                f"Invalid value: content_index {frame['content_index']} does not exist; the "
                "item has one content part (index 0).",
                "content_index",
                client_event_id=event_id,
            )
            return
        generated = int(memory.audio_ms)
        if audio_end_ms > generated:
            await self.error(
                "invalid_value",
                f"Audio content of {generated}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
                client_event_id=event_id,
            )
            return
        active = self.active
        if active is not None and item_id in active.item_ids:
            active.cancel("client_cancelled")
            await active.finished.wait()
        if memory.audio_ms > 0:
            keep = int(len(memory.text) * audio_end_ms / memory.audio_ms)
            memory.text = memory.text[:keep]
        memory.audio_ms = float(audio_end_ms)
        memory.truncated_ms = audio_end_ms
        self.simulator.notify()
        await self.send(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )

    # ---- responses ----------------------------------------------------------------------------

    async def _response_create(self, frame: dict[str, Any]) -> None:
        if self.active is not None:
            await self.error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
                client_event_id=frame.get("event_id"),
            )
            return
        await self._start_response(frame.get("response") or {})

    async def _response_cancel(self, frame: dict[str, Any]) -> None:
        active = self.active
        wanted = frame.get("response_id")
        if active is None or active.cancel_reason is not None or wanted not in (None, active.id):
            await self.error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                client_event_id=frame.get("event_id"),
            )
            return
        active.cancel("client_cancelled")

    async def _start_response(self, params: dict[str, Any] | None) -> None:
        params = params or {}
        tools = params.get("tools", self.session.get("tools") or [])
        names = [
            t["name"] for t in tools if t.get("type", "function") == "function" and "name" in t
        ]
        choice = _tool_choice_name(params.get("tool_choice", self.session.get("tool_choice")))
        decision = self.model.decide(names, choice)
        audio_params = params.get("audio", {}).get("output", {})
        response = _Response(
            id=self.new_id("resp"),
            decision=decision,
            modalities=list(params.get("output_modalities") or self.session["output_modalities"]),
            in_conversation=params.get("conversation", "auto") != "none",
            metadata=params.get("metadata"),
            voice=audio_params.get("voice", self._output.get("voice")),
            out_format=_copy(audio_params.get("format", self._output["format"])),
        )
        self.active = response
        self.conn.spawn(self._run_response(response), name=f"response-{response.id}")

    def _response_json(self, response: _Response, status: str) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": "conv_" + self._prefix,
            "output_modalities": list(response.modalities),
            "max_output_tokens": self.session.get("max_output_tokens", "inf"),
            "audio": {
                "output": {"format": _copy(response.out_format), "voice": _copy(response.voice)}
            },
            "usage": None,
            "metadata": _copy(response.metadata),
        }

    async def _pause(self, response: _Response, seconds: float) -> None:
        """Sleep ``seconds`` unless the response gets cancelled first."""
        if seconds <= 0 or response.cancel_reason is not None:
            return
        loop = asyncio.get_running_loop()
        response.wake = loop.create_future()
        handle = loop.call_later(seconds, _resolve, response.wake)
        try:
            await response.wake
        finally:
            handle.cancel()
            response.wake = None

    async def _run_response(self, response: _Response) -> None:
        try:
            await self.send(
                "rate_limits.updated",
                rate_limits=[
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 38000, "reset_seconds": 3.0},
                ],
            )
            await self.send(
                "response.created", response=self._response_json(response, "in_progress")
            )
            if isinstance(response.decision, ToolCallDecision):
                await self._stream_tool_call(response, response.decision)
                after = response.decision.say_after
                if after is not None and response.cancel_reason is None:
                    call_output = response.output
                    await self._stream_message(response, after, output_index=1)
                    response.output = call_output + response.output
            else:
                await self._stream_message(response, response.decision)
            final = self._response_json(response, "completed")
            if response.cancel_reason is not None:
                final["status"] = "cancelled"
                final["status_details"] = {"type": "cancelled", "reason": response.cancel_reason}
            final["output"] = response.output
            usage = self.model.usage(
                response.output_text, response.output_audio_ms, self.input_ms_total
            )
            final["usage"] = {
                "total_tokens": usage.total,
                "input_tokens": usage.input_total,
                "output_tokens": usage.output_total,
                "input_token_details": {
                    "text_tokens": usage.input_text,
                    "audio_tokens": usage.input_audio,
                    "image_tokens": 0,
                    "cached_tokens": 0,
                    "cached_tokens_details": {
                        "text_tokens": 0,
                        "audio_tokens": 0,
                        "image_tokens": 0,
                    },
                },
                "output_token_details": {
                    "text_tokens": usage.output_text,
                    "audio_tokens": usage.output_audio,
                },
            }
            await self.send("response.done", response=final)
        finally:
            if self.active is response:
                self.active = None
            response.finished.set()
            self.simulator.notify()
        code = self.model.error_after(response.decision.turn)
        if code is not None:
            await self.error(code, f"Simulated error after turn {response.decision.turn}.")

    async def _stream_tool_call(self, response: _Response, call: ToolCallDecision) -> None:
        item_id = self.new_id("item")
        response.item_ids.add(item_id)
        item: dict[str, Any] = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": call.call_id,
            "arguments": "",
            "object": "realtime.item",
        }
        common = {"response_id": response.id, "item_id": item_id, "output_index": 0}
        await self.send(
            "response.output_item.added", response_id=response.id, output_index=0, item=item
        )
        previous = None
        memory = ConversationItem(
            id=item_id, kind="function_call", name=call.name, call_id=call.call_id, arguments=""
        )
        if response.in_conversation:
            previous = self.model.conversation.add(memory)
            await self.send("conversation.item.added", previous_item_id=previous, item=_copy(item))
        text = call.arguments_json
        half = max(1, len(text) // 2)
        for delta in (text[:half], text[half:]):
            if delta:
                await self.send(
                    "response.function_call_arguments.delta",
                    **common,
                    call_id=call.call_id,
                    delta=delta,
                )
        speed = self.script.speed
        await self._pause(response, self.script.chunk_ms / 1000 / speed if speed else 0)
        if response.cancel_reason is None:
            await self.send(
                "response.function_call_arguments.done",
                **common,
                call_id=call.call_id,
                name=call.name,
                arguments=text,
            )
            memory.arguments = text
            item = {**item, "status": "completed", "arguments": text}
        else:
            memory.status = "incomplete"
            item = {**item, "status": "incomplete"}
        await self.send(
            "response.output_item.done", response_id=response.id, output_index=0, item=item
        )
        if response.in_conversation:
            await self.send("conversation.item.done", previous_item_id=previous, item=_copy(item))
        response.output = [_copy(item)]
        response.output_text = text

    async def _stream_message(
        self, response: _Response, say: SpeakDecision, *, output_index: int = 0
    ) -> None:
        item_id = self.new_id("item")
        response.item_ids.add(item_id)
        audio = "audio" in response.modalities
        item: dict[str, Any] = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
            "object": "realtime.item",
        }
        common = {"response_id": response.id, "item_id": item_id, "output_index": output_index}
        memory = ConversationItem(
            id=item_id, kind="message", role="assistant", audio=audio, status="in_progress"
        )
        previous = None
        await self.send(
            "response.output_item.added",
            response_id=response.id,
            output_index=output_index,
            item=item,
        )
        if response.in_conversation:
            previous = self.model.conversation.add(memory)
            await self.send("conversation.item.added", previous_item_id=previous, item=_copy(item))
        part: dict[str, Any] = (
            {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        )
        await self.send("response.content_part.added", **common, content_index=0, part=part)

        plan = say.plan(self.script.chunk_ms)
        fmt_type = response.out_format.get("type", "audio/pcm")
        encoding, rate = _FORMATS.get(fmt_type, ("pcm16", 24000))
        payloads = encoded_chunks(plan, encoding, rate) if audio else ()
        loop = asyncio.get_running_loop()
        start = loop.time()
        spoken = ""
        for index, chunk in enumerate(plan.chunks):
            speed = self.script.speed
            if speed > 0:
                await self._pause(response, start + chunk.start_ms / 1000 / speed - loop.time())
            trailing = response.cancel_reason is not None
            if trailing and (response.cancel_reason != "turn_detected" or not audio):
                break
            if audio:
                await self.send(
                    "response.output_audio.delta", **common, content_index=0, delta=payloads[index]
                )
                memory.audio_ms += chunk.end_ms - chunk.start_ms
                response.output_audio_ms = memory.audio_ms
                self.audio_generated = True
            for delta in chunk.transcript:
                kind = (
                    "response.output_audio_transcript.delta"
                    if audio
                    else "response.output_text.delta"
                )
                await self.send(kind, **common, content_index=0, delta=delta)
                spoken += delta
            if trailing:
                break  # one trailing delta after a barge-in, like the real service
        memory.text = spoken
        memory.status = "completed" if response.cancel_reason is None else "incomplete"
        if audio:
            await self.send("response.output_audio.done", **common, content_index=0)
            await self.send(
                "response.output_audio_transcript.done",
                **common,
                content_index=0,
                transcript=spoken,
            )
            part = {"type": "audio", "transcript": spoken}
            content = {"type": "output_audio", "transcript": spoken}
        else:
            await self.send("response.output_text.done", **common, content_index=0, text=spoken)
            part = {"type": "text", "text": spoken}
            content = {"type": "output_text", "text": spoken}
        await self.send("response.content_part.done", **common, content_index=0, part=part)
        item = {**item, "status": memory.status, "content": [content]}
        await self.send(
            "response.output_item.done",
            response_id=response.id,
            output_index=output_index,
            item=item,
        )
        if response.in_conversation:
            await self.send("conversation.item.done", previous_item_id=previous, item=_copy(item))
        response.output = [_copy(item)]
        response.output_text = spoken


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _memory_item(item_id: str, item: dict[str, Any]) -> ConversationItem:
    kind = item["type"]
    if kind == "function_call":
        return ConversationItem(
            id=item_id,
            kind="function_call",
            name=item["name"],
            arguments=item["arguments"],
            call_id=item.get("call_id"),
        )
    if kind == "function_call_output":
        return ConversationItem(
            id=item_id, kind="function_call_output", call_id=item["call_id"], output=item["output"]
        )
    texts = [part.get("text") or part.get("transcript") or "" for part in item["content"]]
    audio = any(part["type"] in ("input_audio", "output_audio") for part in item["content"])
    return ConversationItem(
        id=item_id,
        kind="message",
        role=item["role"],
        text=" ".join(t for t in texts if t),
        audio=audio,
    )


def _item_json(memory: ConversationItem) -> dict[str, Any]:
    base: dict[str, Any] = {"id": memory.id, "object": "realtime.item", "status": memory.status}
    if memory.kind == "function_call":
        return {
            **base,
            "type": "function_call",
            "name": memory.name or "",
            "call_id": memory.call_id,
            "arguments": memory.arguments or "",
        }
    if memory.kind == "function_call_output":
        return {
            **base,
            "type": "function_call_output",
            "call_id": memory.call_id or "",
            "output": memory.output or "",
        }
    if memory.role == "assistant":
        content = (
            {"type": "output_audio", "transcript": memory.text}
            if memory.audio
            else {"type": "output_text", "text": memory.text}
        )
    elif memory.audio:
        content = {"type": "input_audio", "transcript": memory.text}
    else:
        content = {"type": "input_text", "text": memory.text}
    return {**base, "type": "message", "role": memory.role, "content": [content]}


class OpenAISimulator(BaseSimulator):
    """Loopback OpenAI Realtime GA server (test API in ``docs/simulator.md``).

    ``url`` is ``ws://HOST:PORT/v1/realtime`` (clients append ``?model=``); ``url_base`` is the
    ``/v1`` base for the official SDK's ``websocket_base_url``. ``validate=True`` checks every
    frame against the ``openai`` SDK's server-event union before sending it.
    """

    path = "/v1/realtime"

    def __init__(
        self,
        script: SimScript | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        validate: bool = False,
    ) -> None:
        super().__init__(script, host=host, port=port, record=record, validate=validate)

    @property
    def url_base(self) -> str:
        """``ws://HOST:PORT/v1``, for ``AsyncOpenAI(websocket_base_url=...)``."""
        return self.url.removesuffix("/realtime")

    def check_request(self, request: Request) -> HttpRejection | None:
        path = urlsplit(request.path).path
        if path not in _PATHS:
            return HttpRejection(
                404,
                _http_error(f"Invalid URL (GET {path})", "invalid_request_error", None, None),
            )
        key = _presented_key(request)
        if key is None:
            return HttpRejection(
                401,
                _http_error(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                    None,
                    None,
                ),
            )
        expected = self.script.api_key
        if expected is not None and not secrets.compare_digest(key, expected):
            return HttpRejection(
                401,
                _http_error(
                    "Incorrect API key provided. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    "invalid_api_key",
                    None,
                ),
            )
        query = dict(parse_qsl(urlsplit(request.path).query))
        if not query.get("model") and not query.get("call_id"):
            return HttpRejection(
                400,
                _http_error(
                    "Missing required parameter: 'model'.",
                    "invalid_request_error",
                    "missing_required_parameter",
                    "model",
                ),
            )
        return None

    def new_session(self, conn: SimConnection) -> SessionHandler:
        return _OpenAISession(self, conn)

    def validate_server_frame(self, frame: dict[str, Any]) -> None:
        validate_server_event(frame)

    def is_audio_frame(self, frame: dict[str, Any], *, outgoing: bool) -> bool:
        kind = frame.get("type")
        return kind == ("response.output_audio.delta" if outgoing else "input_audio_buffer.append")

    async def send_error(
        self,
        code: str = "server_error",
        message: str = "Simulated error.",
        *,
        error_type: str = "invalid_request_error",
    ) -> None:
        """Push a recoverable ``error`` event to every live connection now."""
        for conn in self.live_connections:
            if isinstance(conn.session, _OpenAISession):
                await conn.session.error(code, message, error_type=error_type)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("api-key")
    return key.strip() if key and key.strip() else None


def _http_error(message: str, kind: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
