"""The event vocabulary: names and their frozen payload models (``docs/architecture.md``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EVENT_MODELS",
    "EVENT_NAMES",
    "AudioEvent",
    "ConfigUpdatedEvent",
    "ConnectionEvent",
    "ConnectionStrategy",
    "DtmfEvent",
    "ErrorEvent",
    "EventName",
    "InterruptedEvent",
    "ResponseDoneEvent",
    "SpeechEvent",
    "ToolCallCancelledEvent",
    "ToolCallEvent",
    "TranscriptEvent",
    "Usage",
]

EventName = Literal[
    "audio",
    "tool-call",
    "tool-call-cancelled",
    "transcript",
    "speech-started",
    "speech-stopped",
    "interrupted",
    "response-done",
    "config-updated",
    "connected",
    "reconnecting",
    "reconnected",
    "closed",
    "error",
    "dtmf",
]

Strategy = Literal["in-place", "resumed", "replayed"]
#: how a ``reconnected`` session survived: ``failover`` means it moved to another provider
#: target (``provider``, ``model`` and ``capabilities`` of the event say which)
ConnectionStrategy = Literal["in-place", "resumed", "replayed", "failover"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AudioEvent(_Event):
    """Model speech: PCM16 LE mono (or the session's G.711 encoding) in the output format."""

    data: bytes
    sample_rate: int
    response_id: str | None = None


class ToolCallEvent(_Event):
    """The model asks for a tool; answer with ``send_tool_response``."""

    call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallCancelledEvent(_Event):
    """The model no longer wants the results of these calls."""

    call_ids: list[str]


class TranscriptEvent(_Event):
    """Speech as text: deltas (``final=False``) then one final event with the whole turn."""

    role: Literal["user", "assistant"]
    text: str
    final: bool
    item_id: str | None = None


class SpeechEvent(_Event):
    """Provider VAD saw the caller start or stop talking, at ``audio_ms`` into the input."""

    audio_ms: int | None = None


class InterruptedEvent(_Event):
    """Barge-in: the model's current reply was cut; stop playback now."""

    response_id: str | None = None


class Usage(_Event):
    """Token usage of one model turn."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ResponseDoneEvent(_Event):
    """A model turn ended."""

    response_id: str | None = None
    status: Literal["completed", "cancelled", "failed", "incomplete"] = "completed"
    usage: Usage | None = None


class ConfigUpdatedEvent(_Event):
    """``update_config`` finished, using ``strategy``."""

    strategy: Strategy


class ConnectionEvent(_Event):
    """Lifecycle: connected, reconnecting, reconnected (with ``strategy``) and closed.

    A provider failover is ``reconnecting`` then ``reconnected`` with ``strategy="failover"``;
    its ``reconnected`` names the new ``provider`` and ``model`` and carries the new target's
    ``capabilities`` (a dict of :class:`protocol.RealtimeCapabilities` fields).
    """

    reason: str | None = None
    code: int | None = None
    strategy: ConnectionStrategy | None = None
    provider: str | None = None
    model: str | None = None
    capabilities: dict[str, Any] | None = None


class ErrorEvent(_Event):
    """A provider or runtime error; recoverable errors never end the session."""

    code: str
    message: str
    recoverable: bool = True


class DtmfEvent(_Event):
    """The caller pressed a key on a phone keypad (relayed by a media leg, e.g. Twilio's)."""

    digit: Annotated[str, Field(pattern=r"^[0-9*#A-D]$")]


EVENT_MODELS: dict[str, type[BaseModel]] = {
    "audio": AudioEvent,
    "tool-call": ToolCallEvent,
    "tool-call-cancelled": ToolCallCancelledEvent,
    "transcript": TranscriptEvent,
    "speech-started": SpeechEvent,
    "speech-stopped": SpeechEvent,
    "interrupted": InterruptedEvent,
    "response-done": ResponseDoneEvent,
    "config-updated": ConfigUpdatedEvent,
    "connected": ConnectionEvent,
    "reconnecting": ConnectionEvent,
    "reconnected": ConnectionEvent,
    "closed": ConnectionEvent,
    "error": ErrorEvent,
    "dtmf": DtmfEvent,
}

EVENT_NAMES: frozenset[str] = frozenset(EVENT_MODELS)
