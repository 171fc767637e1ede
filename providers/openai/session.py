"""The OpenAI Realtime GA ``session`` object: wire formats, the payload of a config, and which
fields of an update go on the wire. Pure functions, no state.

The payload is the GA shape: ``type: "realtime"``, ``output_modalities: ["audio"]``,
``audio.input/output.format`` exactly ``{"type": "audio/pcm", "rate": 24000}`` or
``{"type": "audio/pcmu"}`` / ``{"type": "audio/pcma"}`` when the session format is G.711 at
8 kHz, ``audio.input.transcription`` with :data:`DEFAULT_TRANSCRIPTION_MODEL`, turn detection,
tools, ``tool_choice``, ``max_output_tokens``. ``temperature`` is not a GA field and is never
sent. ``provider_options`` are laid over the payload with
:func:`providers.translator.deep_merge` (a ``None`` deletes a key); ``type`` stays
``"realtime"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocol.config import AudioFormat, RealtimeSessionConfig, RealtimeSessionConfigUpdate
from protocol.events import ErrorEvent
from providers.translator import deep_merge

__all__ = [
    "DEFAULT_TRANSCRIPTION_MODEL",
    "PCM24K",
    "bytes_per_ms",
    "plan_update",
    "session_payload",
    "wire_format",
    "wire_format_json",
]

#: Input transcription model sent when ``input_transcription`` is on (client option
#: ``transcription_model`` overrides it).
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"

#: PCM16 at 24 kHz, the native OpenAI Realtime format.
PCM24K = AudioFormat(encoding="pcm16", sample_rate=24000)

#: Config fields that are no GA session field: an update of only these sends nothing.
_NOT_SESSION_FIELDS = frozenset({"temperature", "output_transcription"})


def wire_format(fmt: AudioFormat) -> AudioFormat:
    """The format audio travels in on the wire for a session format ``fmt``.

    G.711 at 8 kHz passes through as ``audio/pcmu`` / ``audio/pcma``; anything else is PCM16 at
    24 kHz (the only PCM rate the GA API accepts).
    """
    if fmt.sample_rate == 8000 and fmt.encoding in ("mulaw", "alaw"):
        return fmt
    return PCM24K


def wire_format_json(fmt: AudioFormat) -> dict[str, Any]:
    """The GA ``format`` object of a wire format."""
    wire = wire_format(fmt)
    if wire.encoding == "mulaw":
        return {"type": "audio/pcmu"}
    if wire.encoding == "alaw":
        return {"type": "audio/pcma"}
    return {"type": "audio/pcm", "rate": 24000}


def bytes_per_ms(fmt: AudioFormat) -> float:
    return fmt.bytes_per_second / 1000.0


def session_payload(
    config: RealtimeSessionConfig,
    *,
    transcription_model: str,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The GA session object for ``config``; with ``only``, just those config fields.

    A partial payload (``only``) also says what to turn off: ``transcription: null`` when input
    transcription was switched off, ``max_output_tokens: "inf"`` when the limit was removed.
    """
    fields = None if only is None else set(only)
    full = fields is None

    def want(name: str) -> bool:
        return fields is None or name in fields

    session: dict[str, Any] = {"type": "realtime"}
    if full:
        session["output_modalities"] = ["audio"]
    if want("instructions"):
        session["instructions"] = config.instructions
    if want("tools"):
        session["tools"] = [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            }
            for tool in config.tools
        ]
    if want("tool_choice"):
        choice = config.tool_choice
        session["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "name": choice}
        )
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    if want("input_audio"):
        audio_in["format"] = wire_format_json(config.input_audio)
    if want("input_transcription") or want("language"):
        if config.input_transcription:
            transcription: dict[str, Any] = {"model": transcription_model}
            if config.language:
                transcription["language"] = config.language
            audio_in["transcription"] = transcription
        elif not full:
            audio_in["transcription"] = None
    if want("turn_detection"):
        audio_in["turn_detection"] = _turn_detection(config)
    if want("output_audio"):
        audio_out["format"] = wire_format_json(config.output_audio)
    if want("voice") and config.voice is not None:
        audio_out["voice"] = config.voice
    if audio_in or audio_out:
        session["audio"] = {
            key: value for key, value in (("input", audio_in), ("output", audio_out)) if value
        }
    if want("max_output_tokens") and (config.max_output_tokens is not None or not full):
        session["max_output_tokens"] = (
            config.max_output_tokens if config.max_output_tokens is not None else "inf"
        )
    if want("provider_options") and config.provider_options:
        session = deep_merge(session, config.provider_options)
        session["type"] = "realtime"
    return session


def _turn_detection(config: RealtimeSessionConfig) -> dict[str, Any] | None:
    td = config.turn_detection
    if td.mode == "manual":
        return None
    out: dict[str, Any] = {
        "type": td.mode,
        "create_response": True,
        "interrupt_response": td.interrupt_response,
    }
    if td.mode == "server_vad":
        if td.threshold is not None:
            out["threshold"] = td.threshold
        if td.prefix_padding_ms is not None:
            out["prefix_padding_ms"] = td.prefix_padding_ms
        if td.silence_ms is not None:
            out["silence_duration_ms"] = td.silence_ms
    return out


def plan_update(
    previous: RealtimeSessionConfig,
    update: RealtimeSessionConfigUpdate,
    *,
    audio_seen: bool,
) -> tuple[RealtimeSessionConfig, set[str], ErrorEvent | None]:
    """``(config, fields, refused)`` for applying ``update`` in place.

    ``config`` is the config in effect afterwards; ``fields`` the config fields whose change
    goes on the wire (a format change that keeps the wire format, a voice reset to None and the
    non-GA fields do not). A voice change after the model produced audio on this connection
    cannot be applied (the server would reject the whole update): ``config`` keeps the old
    voice and ``refused`` is the recoverable ``error`` event ``cannot_update_voice`` to emit;
    the other changes still go out.
    """
    new = previous.merged(update)
    changed = {
        name for name in update.model_fields_set if getattr(new, name) != getattr(previous, name)
    }
    refused = None
    if "voice" in changed and audio_seen:
        refused = ErrorEvent(
            code="cannot_update_voice",
            message=(
                f"voice cannot change from {previous.voice!r} to {new.voice!r} after "
                "the model has produced audio in this session; the other changes "
                "were applied"
            ),
            recoverable=True,
        )
        new = new.model_copy(update={"voice": previous.voice})
        changed.discard("voice")
    if "voice" in changed and new.voice is None:
        changed.discard("voice")  # the server keeps its voice; there is no "unset"
    for name in ("input_audio", "output_audio"):
        if name in changed and wire_format(getattr(new, name)) == wire_format(
            getattr(previous, name)
        ):
            changed.discard(name)
    return new, changed - _NOT_SESSION_FIELDS, refused
