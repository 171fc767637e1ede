"""Helpers for the OpenAI translator unit tests (exposed as the ``wire`` fixture).

``recorded/*.json`` are server frames recorded from a session between the client and
``providers.simulator.OpenAISimulator`` (audio deltas shortened); every builder below produces
frames that validate against the ``openai`` SDK's server-event union (strict discriminated
``TypeAdapter``, the recipe of ``providers/simulator/openai_schema.py``), so hand-built frames
stay faithful to the GA wire.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Union, get_args

import pytest
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter

from protocol.config import RealtimeSessionConfig
from providers.openai.translator import Action, Emit, OpenAITranslator, Send

RECORDED = Path(__file__).parent / "recorded"


def _strict(union: Any) -> TypeAdapter[Any]:
    members = get_args(get_args(union)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


CLIENT_EVENTS = _strict(RealtimeClientEvent)
SERVER_EVENTS = _strict(RealtimeServerEvent)


class Wire:
    """Server-event builders, a recorded-session loader and action filters."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    # ---- validation ---------------------------------------------------------------------

    @staticmethod
    def client_ok(frame: dict[str, Any]) -> dict[str, Any]:
        CLIENT_EVENTS.validate_python(frame)
        return frame

    @staticmethod
    def server_ok(frame: dict[str, Any]) -> dict[str, Any]:
        SERVER_EVENTS.validate_python(frame)
        return frame

    # ---- actions ------------------------------------------------------------------------

    @staticmethod
    def emitted(actions: list[Action], name: str | None = None) -> list[Any]:
        return [a.payload for a in actions if isinstance(a, Emit) and name in (None, a.name)]

    @staticmethod
    def names(actions: list[Action]) -> list[str]:
        return [a.name for a in actions if isinstance(a, Emit)]

    @classmethod
    def sent(cls, actions: list[Action], kind: str | None = None) -> list[dict[str, Any]]:
        frames = [a.frame for a in actions if isinstance(a, Send)]
        for frame in frames:
            cls.client_ok(frame)
        return [f for f in frames if kind in (None, f["type"])]

    @staticmethod
    def drive(
        translator: OpenAITranslator, frames: list[dict[str, Any]], now: float = 0.0
    ) -> list[Action]:
        actions: list[Action] = []
        for frame in frames:
            actions.extend(translator.receive(frame, now))
        return actions

    @staticmethod
    def load(name: str) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = json.loads((RECORDED / f"{name}.json").read_text())
        return frames

    # ---- a live translator ----------------------------------------------------------------

    def live(self, config: RealtimeSessionConfig | None = None, **kwargs: Any) -> OpenAITranslator:
        """A translator whose handshake completed (as after ``connect``)."""
        translator = OpenAITranslator(config or RealtimeSessionConfig(), **kwargs)
        translator.handshake_frames(reconnect=False)
        translator.receive(self.session_updated(), 0.0)
        translator.after_handshake()
        return translator

    # ---- server events ----------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.server_ok({"type": kind, "event_id": f"event_{next(self._ids)}", **fields})

    def session_updated(self) -> dict[str, Any]:
        return self._event(
            "session.updated",
            session={"type": "realtime", "object": "realtime.session", "id": "sess_1"},
        )

    def error(
        self,
        code: str | None,
        message: str = "boom",
        *,
        event_id: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> dict[str, Any]:
        return self._event(
            "error",
            error={
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    def speech_started(self, ms: int = 0, item: str = "item_user") -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_started", audio_start_ms=ms, item_id=item)

    def speech_stopped(self, ms: int = 900, item: str = "item_user") -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=item)

    def committed(self, item: str = "item_user") -> dict[str, Any]:
        return self._event("input_audio_buffer.committed", item_id=item, previous_item_id=None)

    def response_created(self, rid: str) -> dict[str, Any]:
        return self._event(
            "response.created",
            response={"id": rid, "object": "realtime.response", "status": "in_progress"},
        )

    def response_done(
        self,
        rid: str,
        status: str = "completed",
        *,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": rid,
            "object": "realtime.response",
            "status": status,
            "output": output or [],
        }
        if usage is not None:
            body["usage"] = usage
        if details is not None:
            body["status_details"] = details
        return self._event("response.done", response=body)

    def message_added(self, rid: str, item: str) -> dict[str, Any]:
        return self._event(
            "response.output_item.added",
            response_id=rid,
            output_index=0,
            item={"id": item, "type": "message", "role": "assistant", "content": []},
        )

    def call_added(self, rid: str, call: str, name: str = "get_weather") -> dict[str, Any]:
        return self._event(
            "response.output_item.added",
            response_id=rid,
            output_index=0,
            item={
                "id": f"item_{call}",
                "type": "function_call",
                "call_id": call,
                "name": name,
                "arguments": "",
            },
        )

    def args_done(
        self, rid: str, call: str, arguments: str = '{"city": "Paris"}', name: str = "get_weather"
    ) -> dict[str, Any]:
        return self._event(
            "response.function_call_arguments.done",
            response_id=rid,
            item_id=f"item_{call}",
            output_index=0,
            call_id=call,
            name=name,
            arguments=arguments,
        )

    def audio(self, rid: str, item: str, nbytes: int = 4800, value: int = 1000) -> dict[str, Any]:
        pcm = value.to_bytes(2, "little", signed=True) * (nbytes // 2)
        return self._event(
            "response.output_audio.delta",
            response_id=rid,
            item_id=item,
            output_index=0,
            content_index=0,
            delta=base64.b64encode(pcm).decode(),
        )

    def audio_done(self, rid: str, item: str) -> dict[str, Any]:
        return self._event(
            "response.output_audio.done",
            response_id=rid,
            item_id=item,
            output_index=0,
            content_index=0,
        )

    def transcript_delta(self, rid: str, item: str, delta: str) -> dict[str, Any]:
        return self._event(
            "response.output_audio_transcript.delta",
            response_id=rid,
            item_id=item,
            output_index=0,
            content_index=0,
            delta=delta,
        )

    def transcript_done(self, rid: str, item: str, text: str) -> dict[str, Any]:
        return self._event(
            "response.output_audio_transcript.done",
            response_id=rid,
            item_id=item,
            output_index=0,
            content_index=0,
            transcript=text,
        )

    def output_added(self, call: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.added",
            previous_item_id=None,
            item={
                "id": f"item_out_{call}",
                "type": "function_call_output",
                "call_id": call,
                "output": "{}",
            },
        )

    def user_transcript(self, item: str, *parts: str) -> list[dict[str, Any]]:
        frames = [
            self._event(
                "conversation.item.input_audio_transcription.delta",
                item_id=item,
                content_index=0,
                delta=part,
            )
            for part in parts
        ]
        frames.append(
            self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item,
                content_index=0,
                transcript="".join(parts),
                usage={"type": "duration", "seconds": 1.0},
            )
        )
        return frames

    def reply(
        self, rid: str, item: str, text: str = "Hello there.", chunks: int = 2
    ) -> list[dict[str, Any]]:
        """A complete spoken reply in the GA order (as in ``recorded/full_turn.json``)."""
        words = text.split(" ")
        frames = [self.response_created(rid), self.message_added(rid, item)]
        for i, word in enumerate(words):
            if i < chunks:
                frames.append(self.audio(rid, item))
            frames.append(
                self.transcript_delta(rid, item, word + (" " if i < len(words) - 1 else ""))
            )
        frames += [self.audio_done(rid, item), self.transcript_done(rid, item, text)]
        frames.append(
            self.response_done(
                rid,
                output=[{"id": item, "type": "message", "role": "assistant", "content": []}],
                usage={"total_tokens": 30, "input_tokens": 10, "output_tokens": 20},
            )
        )
        return frames


@pytest.fixture
def wire() -> Wire:
    return Wire()
