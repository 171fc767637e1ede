"""Gemini Live translator: wire JSON <-> voicegrid protocol events, with no I/O.

The translator is a plain object in the style of a sans-I/O protocol core: the client feeds it
every server message (``receive_message``, or ``receive`` for raw frames) and asks it for the
wire frames of every command (``setup_frame``, ``audio_frame``, ``activity_start_frames``,
``tool_response_frames``, ``request_response_frames``, ``restart_frames``). It never awaits and
never touches a socket, so tests drive it with recorded wire JSON.

All per-session protocol state lives here, in one place:

- the model turn (response) lifecycle: a turn opens on the first model output, tool call or
  ``interrupted`` and closes on ``turnComplete`` with exactly one ``response-done``; a turn cut by
  a lost connection is closed by :meth:`GeminiTranslator.connection_lost` (status
  ``incomplete``), so even then it gets exactly one;
- transcripts: fragments are emitted as deltas and accumulated; the user's final comes on
  ``inputTranscription.finished`` or when the model turn completes, the model's final when its
  turn ends;
- tool calls: pending calls (id -> name) so a response without a name is completed, cancelled ids
  (``toolCallCancellation`` or lost in a reconnect) so a late result is dropped and logged;
- session resumption: the latest *resumable* handle (a non-resumable update never erases it), and
  which calls were issued after it (a resumed session does not know them, so they are reported
  cancelled and their held results dropped; also when another process resumes the session with
  an exported handle, see :meth:`GeminiTranslator.restore_handle`); every resumable update is
  also a :class:`ResumptionPoint` output carrying its ``lastConsumedClientMessageIndex`` (when
  the setup asked for ``transparent`` resumption), so the client can tell which of the messages
  it sent the new handle's state includes;
- manual turn detection: whether an activity is open in the outgoing stream, so a new connection
  re-opens it before the held audio that belongs to it;
- the conversation so far as text, to seed a new session when no handle can be used;
- audio conversion: session input format -> 16 kHz PCM16, 24 kHz PCM16 -> session output format.

Server frames are read in camelCase, the only casing the service sends. Client frames are written
in camelCase. Outputs of :meth:`GeminiTranslator.receive_message` are :class:`Emit` (a protocol
event for the client to emit) and three control signals the client acts on:
:class:`SetupComplete`, :class:`GoAway` and :class:`ResumptionPoint`. A message that cannot be
used raises ``ProviderProtocolError`` as in every translator (:mod:`providers.translator`): the
transport reports it as a recoverable ``error`` event ``malformed_frame`` and the session goes on.
A message carries several independent parts, so the one raised is a
:class:`~providers.translator.MalformedFrame` whose ``salvaged`` outputs (what the parts before
the bad one produced) the client still applies. Only an invalid ``goAway.timeLeft`` is used
anyway (as 0 s) with the ``malformed_frame`` error among its outputs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from protocol import (
    AudioConverter,
    AudioEvent,
    AudioFormat,
    ConfigError,
    InterruptedEvent,
    ProviderProtocolError,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ResponseDoneEvent,
    SpeechEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    TranscriptEvent,
    Usage,
    UsageError,
)
from protocol.audio import check_frame
from providers.translator import (
    Emit,
    MalformedFrame,
    Signal,
    deep_merge,
    malformed_frame_error,
    parse_frame,
)

__all__ = [
    "INPUT_MIME_TYPE",
    "INPUT_SAMPLE_RATE",
    "OUTPUT_SAMPLE_RATE",
    "Emit",
    "GeminiTranslator",
    "GoAway",
    "Output",
    "ResumptionPoint",
    "SetupComplete",
    "function_response_payload",
    "parse_duration",
    "qualify_model",
]

log = logging.getLogger("voicegrid.gemini")

#: Gemini Live's native input rate and the exact mimeType its audio input is declared with.
INPUT_SAMPLE_RATE = 16000
INPUT_MIME_TYPE = "audio/pcm;rate=16000"
#: Gemini Live always speaks 24 kHz PCM16.
OUTPUT_SAMPLE_RATE = 24000

_NATIVE_INPUT = AudioFormat(encoding="pcm16", sample_rate=INPUT_SAMPLE_RATE)
_QUALIFIED_PREFIXES = ("models/", "projects/", "publishers/", "tunedModels/")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
_RATE = re.compile(r"rate=(\d+)")
_SERVER_MESSAGES = frozenset(
    {
        "setupComplete",
        "serverContent",
        "toolCall",
        "toolCallCancellation",
        "usageMetadata",
        "goAway",
        "sessionResumptionUpdate",
        "voiceActivity",
        "voiceActivityDetectionSignal",
    }
)


@dataclass(frozen=True, slots=True)
class SetupComplete(Signal):
    """The server accepted ``setup``: the session (or the resumed session) is live."""

    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class GoAway(Signal):
    """The server will close this connection in ``time_left_s`` seconds."""

    time_left_s: float


@dataclass(frozen=True, slots=True)
class ResumptionPoint(Signal):
    """The server issued a new resumable handle.

    ``consumed_index`` is its ``lastConsumedClientMessageIndex``: the index, on this connection,
    of the last client message the handle's state includes (``setup`` is 0, the first message
    after it 1). None when the server sent none (no ``transparent`` resumption, the Gemini
    Developer API, or a model that omits it).
    """

    consumed_index: int | None = None


Output = Emit | SetupComplete | GoAway | ResumptionPoint


def qualify_model(model: str) -> str:
    """``models/<id>`` for a bare model id; already qualified names are kept as they are."""
    if model.startswith(_QUALIFIED_PREFIXES):
        return model
    return f"models/{model}"


def parse_duration(value: object) -> float | None:
    """Seconds of a protobuf JSON Duration such as ``"50s"`` or ``"0.500s"``; None if invalid."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1))
    if isinstance(value, dict):
        seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
        if isinstance(seconds, int | str) and isinstance(nanos, int):
            try:
                return float(seconds) + nanos / 1e9
            except ValueError:
                return None
    return None


def message_index(value: object) -> int | None:
    """A ``lastConsumedClientMessageIndex``: an int64, which protobuf JSON writes as a string
    (``"42"``) and some encoders as a number; None when absent or not a valid index."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def function_response_payload(response: RealtimeToolResponse) -> dict[str, Any]:
    """The object a ``functionResponse.response`` carries for ``response``.

    Gemini needs an object: a dict output is sent as is, any other JSON value is wrapped as
    ``{"output": value}``, and an error result as ``{"error": value}``.
    """
    if response.is_error:
        return {"error": response.output}
    if isinstance(response.output, dict):
        return response.output
    return {"output": response.output}


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProviderProtocolError(f"{where} must be an object, got {type(value).__name__}")
    return value


class GeminiTranslator:
    """Gemini Live wire protocol state for one voice session (see the module docstring).

    ``max_history`` bounds the conversation kept for seeding a new session (entries, oldest
    dropped first), so a long session's memory stays bounded. ``transparent`` asks for
    transparent resumption (``sessionResumption.transparent``, Vertex AI only): the server then
    reports with every handle the last client message its state includes.
    """

    def __init__(
        self,
        *,
        model: str,
        config: RealtimeSessionConfig | None = None,
        max_history: int = 200,
        transparent: bool = False,
    ) -> None:
        self.model = model
        self.transparent = transparent
        self._config = config or RealtimeSessionConfig()
        self._input: AudioConverter = AudioConverter(self._config.input_audio, _NATIVE_INPUT)
        self._outputs: dict[int, AudioConverter] = {}
        self._check_provider_options(self._config)
        # resumption
        self._handle: str | None = None
        #: counts changes of the handle (new, restored, dropped): part of the client's
        #: ``state_version``, since a new handle changes the export without any event
        self.handle_changes = 0
        self._last_update_resumable = False
        self._calls_after_handle: set[str] = set()
        self._lost_on_import: list[str] = []  # another process's calls a resume cannot answer
        # tool calls
        self._pending: dict[str, str] = {}
        self._cancelled: set[str] = set()
        self._call_seq = 0
        # the current model turn
        self._response_seq = 0
        # Gemini has no response ids (and a call may come without one): ours are unique per
        # translator, so a session continued by another client or worker never reuses an id
        # an application already saw for another turn or call
        self._id_prefix = secrets.token_hex(4)
        self._response_id: str | None = None
        self._interrupted = False
        self._usage: Usage | None = None
        self._out_text: list[str] = []
        self._user_seq = 0
        self._user_text: list[str] = []
        # manual turn detection: an activityStart was queued and its activityEnd not yet
        self._activity_open = False
        self._reopen_activity = False
        self._replayed = False
        self.history: deque[tuple[Literal["user", "model"], str]] = deque(maxlen=max_history)

    # ----------------------------------------------------------------------------- config

    @property
    def config(self) -> RealtimeSessionConfig:
        return self._config

    def configure(self, config: RealtimeSessionConfig) -> None:
        """Use ``config`` from now on; audio converters keep their state when formats stay."""
        self._check_provider_options(config)
        if config.input_audio != self._config.input_audio:
            self._input = AudioConverter(config.input_audio, _NATIVE_INPUT)
        if config.output_audio != self._config.output_audio:
            self._outputs.clear()
        self._config = config

    @staticmethod
    def _check_provider_options(config: RealtimeSessionConfig) -> None:
        setup = config.provider_options.get("setup")
        if setup is not None and not isinstance(setup, dict):
            raise ConfigError(
                f"provider_options['setup'] must be a dict of setup fields (camelCase) to "
                f"deep-merge, got {type(setup).__name__}"
            )

    @property
    def manual_turns(self) -> bool:
        return self._config.turn_detection.mode == "manual"

    # ------------------------------------------------------------------------- resumption

    @property
    def handle(self) -> str | None:
        """The latest resumable session handle, or None before the server issued one."""
        return self._handle

    @property
    def calls_after_handle(self) -> list[str]:
        """Pending tool calls the session behind :attr:`handle` does not know (issued after it):
        a session resumed with the handle never takes their results."""
        return [call_id for call_id in self._pending if call_id in self._calls_after_handle]

    def restore_handle(self, handle: str, *, lost_calls: Iterable[str] = ()) -> None:
        """Use a handle exported by another process; the next ``setup_frame`` resumes it.

        ``lost_calls`` are the exporter's :attr:`calls_after_handle`: they count as cancelled
        (a later result for one is dropped and logged) and :meth:`lost_calls_cancelled`
        reports them once.
        """
        self._handle = handle
        self.handle_changes += 1
        self._last_update_resumable = False
        lost = [call_id for call_id in lost_calls if call_id not in self._cancelled]
        self._cancelled.update(lost)
        self._lost_on_import = lost

    def lost_calls_cancelled(self) -> list[Output]:
        """``tool-call-cancelled`` for the calls :meth:`restore_handle` was told were lost
        (once; nothing when there were none)."""
        lost, self._lost_on_import = self._lost_on_import, []
        if not lost:
            return []
        return [Emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=lost))]

    def drop_handle(self) -> None:
        """Forget the handle (the server rejected it); the next setup starts a new session."""
        self._handle = None
        self.handle_changes += 1
        self._last_update_resumable = False

    @property
    def at_resumable_point(self) -> bool:
        """True when resuming now with :attr:`handle` loses nothing the model produced.

        That is: the server's latest resumption update was resumable, and since then no model
        turn opened and no tool call is pending.
        """
        return (
            self._handle is not None
            and self._last_update_resumable
            and self._response_id is None
            and not self._pending
        )

    @property
    def pending_call_ids(self) -> list[str]:
        return list(self._pending)

    # --------------------------------------------------------------------- client frames

    def setup_frame(self, *, resume: bool) -> dict[str, Any]:
        """The ``setup`` message for the current config; with the handle when ``resume``.

        ``provider_options["setup"]`` is deep-merged last (camelCase wire keys;
        :func:`providers.translator.deep_merge`: a ``None`` value deletes the key), so every
        piece below can be overridden or removed.
        """
        cfg = self._config
        generation: dict[str, Any] = {"responseModalities": ["AUDIO"]}
        speech: dict[str, Any] = {}
        if cfg.voice:
            speech["voiceConfig"] = {"prebuiltVoiceConfig": {"voiceName": cfg.voice}}
        if cfg.language:
            speech["languageCode"] = cfg.language
        if speech:
            generation["speechConfig"] = speech
        if cfg.temperature is not None:
            generation["temperature"] = cfg.temperature
        if cfg.max_output_tokens is not None:
            generation["maxOutputTokens"] = cfg.max_output_tokens

        setup: dict[str, Any] = {"model": qualify_model(self.model), "generationConfig": generation}
        if cfg.instructions:
            setup["systemInstruction"] = {"parts": [{"text": cfg.instructions}]}
        # Gemini Live has no tool_config: "none" is honoured by not declaring the tools, and
        # "required" or a tool name cannot be expressed, so they behave like "auto".
        if cfg.tools and cfg.tool_choice != "none":
            setup["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": tool.name,
                            "description": tool.description,
                            "parametersJsonSchema": tool.parameters,
                        }
                        for tool in cfg.tools
                    ]
                }
            ]
        realtime = self._realtime_input_config()
        if realtime:
            setup["realtimeInputConfig"] = realtime
        if cfg.input_transcription:
            setup["inputAudioTranscription"] = {}
        if cfg.output_transcription:
            setup["outputAudioTranscription"] = {}
        resumption: dict[str, Any] = (
            {"handle": self._handle} if resume and self._handle is not None else {}
        )
        if self.transparent:
            resumption["transparent"] = True
        setup["sessionResumption"] = resumption
        # Without compression an audio session ends at ~15 minutes; the sliding window lifts it.
        setup["contextWindowCompression"] = {"slidingWindow": {}}
        overrides = cfg.provider_options.get("setup")
        if isinstance(overrides, dict):
            setup = deep_merge(setup, overrides)
        return {"setup": setup}

    def _realtime_input_config(self) -> dict[str, Any]:
        td = self._config.turn_detection
        detection: dict[str, Any] = {}
        if td.mode == "manual":
            detection["disabled"] = True
        else:
            # Gemini VAD has a two-level sensitivity, not a threshold: a threshold above the
            # OpenAI-style midpoint asks for less sensitive detection, one below it for more.
            if td.threshold is not None and td.threshold > 0.5:
                detection["startOfSpeechSensitivity"] = "START_SENSITIVITY_LOW"
            elif td.threshold is not None and td.threshold < 0.5:
                detection["startOfSpeechSensitivity"] = "START_SENSITIVITY_HIGH"
            if td.silence_ms is not None:
                detection["silenceDurationMs"] = td.silence_ms
            if td.prefix_padding_ms is not None:
                detection["prefixPaddingMs"] = td.prefix_padding_ms
        realtime: dict[str, Any] = {}
        if detection:
            realtime["automaticActivityDetection"] = detection
        if not td.interrupt_response:
            realtime["activityHandling"] = "NO_INTERRUPTION"
        return realtime

    def input_audio(self, frame: object) -> bytes:
        """Validate a caller frame in the session input format; return it as 16 kHz PCM16.

        Raises ``AudioFormatError`` for a non-bytes frame or an odd PCM16 byte count.
        """
        return self._input.convert(check_frame(frame, self._config.input_audio))

    @staticmethod
    def audio_frame(pcm16k: bytes) -> dict[str, Any]:
        """``realtimeInput.audio`` carrying 16 kHz PCM16 (never the deprecated mediaChunks)."""
        return {
            "realtimeInput": {
                "audio": {
                    "data": base64.b64encode(pcm16k).decode("ascii"),
                    "mimeType": INPUT_MIME_TYPE,
                }
            }
        }

    def activity_start_frames(self) -> list[dict[str, Any]]:
        """With manual turn detection, the ``activityStart`` due before the next audio."""
        if not self.manual_turns or self._activity_open:
            return []
        self._activity_open = True
        return [{"realtimeInput": {"activityStart": {}}}]

    def request_response_frames(self, instruction: str | None) -> list[dict[str, Any]]:
        """Frames that make the model take a turn now.

        With an instruction the text goes as ``realtimeInput.text``, on the same ordered channel
        as the audio (a ``clientContent`` turn would interrupt a reply, is not to be interleaved
        with realtime input, and 3.x models reject it mid-session). Without one, automatic VAD
        gets ``audioStreamEnd`` (the caller's audio so far is a finished utterance). With manual
        turn detection the turn is bracketed: ``activityStart`` if none is open, the text if
        any, then ``activityEnd``.
        """
        frames: list[dict[str, Any]] = []
        if self.manual_turns:
            if not self._activity_open:
                frames.append({"realtimeInput": {"activityStart": {}}})
            if instruction:
                frames.append({"realtimeInput": {"text": instruction}})
                self._remember("user", instruction)
            frames.append({"realtimeInput": {"activityEnd": {}}})
            self._activity_open = False
            return frames
        if instruction:
            self._remember("user", instruction)
            return [{"realtimeInput": {"text": instruction}}]
        return [{"realtimeInput": {"audioStreamEnd": True}}]

    def tool_response_frames(
        self, responses: Iterable[RealtimeToolResponse]
    ) -> list[dict[str, Any]]:
        """``toolResponse.functionResponses`` for the results that are still wanted.

        The ``name`` comes from the pending call when the caller omits it. A result for a
        cancelled call is dropped and logged. Raises ``UsageError`` for an unknown call id
        without a name (Gemini needs the function name).
        """
        items: list[dict[str, Any]] = []
        for response in responses:
            call_id = response.call_id
            if call_id in self._cancelled:
                log.warning(
                    "dropping the result for tool call %r: the model cancelled that call", call_id
                )
                continue
            name = response.name or self._pending.get(call_id)
            if name is None:
                raise UsageError(
                    f"tool response for unknown call id {call_id!r} has no name; pass the "
                    f"function name or answer one of the pending calls {sorted(self._pending)}"
                )
            self._pending.pop(call_id, None)
            payload = function_response_payload(response)
            items.append({"id": call_id, "name": name, "response": payload})
            self._remember("user", f"[{name} returned {orjson.dumps(payload).decode()}]")
        if not items:
            return []
        return [{"toolResponse": {"functionResponses": items}}]

    def _seed_frames(self) -> list[dict[str, Any]]:
        """A ``clientContent`` message carrying the conversation so far, for a new session.

        ``turnComplete`` is false: the history is context, and the model answers the caller's
        next utterance rather than replying to the seed itself.
        """
        turns: list[dict[str, Any]] = []
        for role, text in self.history:
            if turns and turns[-1]["role"] == role:
                turns[-1]["parts"].append({"text": text})
            else:
                turns.append({"role": role, "parts": [{"text": text}]})
        if not turns:
            return []
        return [{"clientContent": {"turns": turns, "turnComplete": False}}]

    # ------------------------------------------------------------------ connection changes

    def connection_lost(self) -> list[Output]:
        """The socket is gone: close a model turn it cut (``incomplete``) and forget its state."""
        out: list[Output] = []
        if self._response_id is not None:
            out.extend(self._finish_turn("incomplete"))
        self._last_update_resumable = False
        return out

    def session_restored(self, *, resumed: bool) -> list[Output]:
        """A new connection finished its setup: ``resumed`` with the handle, else a new session.

        Calls the new session does not know are cancelled: after a resume those issued after
        the handle, after a new session all of them. Pending ones among them are reported as
        ``tool-call-cancelled``; results for them (held or later) are dropped and logged.
        """
        self._replayed = not resumed
        lost = set(self._calls_after_handle) | (set() if resumed else set(self._pending))
        self._cancelled |= lost
        self._calls_after_handle.clear()
        reported = [call_id for call_id in self._pending if call_id in lost]
        for call_id in reported:
            del self._pending[call_id]
        if not reported:
            return []
        return [Emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=reported))]

    def filter_held(
        self, frames: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[Output]]:
        """Of the control frames the old socket did not take, those the new session still wants.

        Called after :meth:`session_restored`. Function responses for calls the new session
        does not know are dropped and logged: after a resume they are reported as
        ``tool-call-cancelled`` (the model never gets those results); after a new session the
        seed of :meth:`restart_frames` carries them as text. Also notes whether the held audio
        belongs to an open manual activity, so :meth:`restart_frames` re-opens it.
        """
        _, kept, outputs = self.filter_resumed([], frames)
        return kept, outputs

    def filter_resumed(
        self, resent: list[dict[str, Any]], held: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Output]]:
        """:meth:`filter_held` over what a resumed connection sends before new input, in order.

        ``resent`` are messages an old socket took that the resumed state lacks (the client
        re-sends them first); ``held`` are the control frames no socket took. Returns the kept
        ones of each (a frame is kept as is, or rebuilt without the dropped function responses)
        and the outputs to apply. Whether the traffic continues an open manual activity is
        decided on both, in the order they go out.
        """
        kept: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        dropped: list[str] = []
        first_marker: str | None = None
        for part, frames in enumerate((resent, held)):
            for frame in frames:
                realtime = frame.get("realtimeInput")
                if isinstance(realtime, dict) and first_marker is None:
                    if "activityStart" in realtime:
                        first_marker = "start"
                    elif "activityEnd" in realtime:
                        first_marker = "end"
                wanted = self._wanted_results(frame, dropped)
                if wanted is not None:
                    kept[part].append(wanted)
        self._reopen_activity = self.manual_turns and (
            first_marker == "end" or (first_marker is None and self._activity_open)
        )
        if not dropped or self._replayed:
            return kept[0], kept[1], []
        cancelled = Emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=dropped))
        return kept[0], kept[1], [cancelled]

    def _wanted_results(self, frame: dict[str, Any], dropped: list[str]) -> dict[str, Any] | None:
        """``frame`` without the function responses the new session cannot take (their ids go
        to ``dropped``); None when nothing is left of it."""
        tool = frame.get("toolResponse")
        if not isinstance(tool, dict):
            return frame
        wanted = []
        for item in tool.get("functionResponses", []):
            if self._replayed or item.get("id") in self._cancelled:
                log.warning(
                    "dropping the held result for tool call %r: the new session does not know "
                    "that call",
                    item.get("id"),
                )
                dropped.append(str(item.get("id")))
            else:
                wanted.append(item)
        if not wanted:
            return None
        if len(wanted) == len(tool.get("functionResponses", [])):
            return frame
        return {"toolResponse": {**tool, "functionResponses": wanted}}

    def restart_frames(self) -> list[dict[str, Any]]:
        """Frames a reconnected session needs before any held traffic.

        After a new session (no usable handle): the conversation so far as a ``clientContent``
        seed. With manual turn detection, an ``activityStart`` when the held audio continues an
        open activity.
        """
        frames = self._seed_frames() if self._replayed else []
        if self._reopen_activity:
            frames.append({"realtimeInput": {"activityStart": {}}})
            self._reopen_activity = False
        return frames

    # --------------------------------------------------------------------- server frames

    def receive(self, raw: bytes | str) -> list[Output]:
        """Translate one raw server frame (binary or text JSON) into outputs, in order.

        Raises ``ProviderProtocolError`` when the frame is not a JSON object, else as
        :meth:`receive_message`.
        """
        return self.receive_message(parse_frame(raw))

    def receive_message(self, message: dict[str, Any]) -> list[Output]:
        """Translate one parsed server message into outputs, in order.

        Raises :class:`~providers.translator.MalformedFrame` when a part of the message has the
        wrong shape; its ``salvaged`` outputs are what the parts before it produced.
        """
        out: list[Output] = []
        try:
            self._dispatch(message, out)
        except ProviderProtocolError as exc:
            raise MalformedFrame(
                f"{exc.message} (message keys {sorted(message)})", salvaged=out
            ) from exc
        return out

    def _dispatch(self, message: dict[str, Any], out: list[Output]) -> None:
        if not message.keys() & _SERVER_MESSAGES:
            log.debug("ignoring Gemini server message with keys %s", sorted(message))
            return
        if "setupComplete" in message:
            body = message["setupComplete"]
            session_id = body.get("sessionId") if isinstance(body, dict) else None
            out.append(SetupComplete(session_id if isinstance(session_id, str) else None))
        if "usageMetadata" in message:
            # Read before serverContent: it usually rides on the turnComplete frame.
            self._on_usage(_obj(message["usageMetadata"], "usageMetadata"))
        if "sessionResumptionUpdate" in message:
            self._on_resumption(
                _obj(message["sessionResumptionUpdate"], "sessionResumptionUpdate"), out
            )
        if "voiceActivity" in message or "voiceActivityDetectionSignal" in message:
            self._on_voice_activity(message, out)
        if "toolCall" in message:
            self._on_tool_call(_obj(message["toolCall"], "toolCall"), out)
        if "toolCallCancellation" in message:
            self._on_cancellation(
                _obj(message["toolCallCancellation"], "toolCallCancellation"), out
            )
        if "serverContent" in message:
            self._on_content(_obj(message["serverContent"], "serverContent"), out)
        if "goAway" in message:
            body = _obj(message["goAway"], "goAway")
            seconds = parse_duration(body.get("timeLeft", "0s"))
            if seconds is None:
                why = f"goAway.timeLeft {body.get('timeLeft')!r} is invalid"
                log.warning("malformed Gemini server frame: %s", why)
                out.append(Emit("error", malformed_frame_error(why)))
                seconds = 0.0
            out.append(GoAway(seconds))

    def _on_usage(self, body: dict[str, Any]) -> None:
        def count(*keys: str) -> int:
            for key in keys:
                value = body.get(key)
                if isinstance(value, int):
                    return value
            return 0

        prompt = count("promptTokenCount")
        response = count("responseTokenCount", "candidatesTokenCount")
        total = count("totalTokenCount") or prompt + response
        self._usage = Usage(input_tokens=prompt, output_tokens=response, total_tokens=total)

    def _on_resumption(self, body: dict[str, Any], out: list[Output]) -> None:
        handle = body.get("newHandle")
        if body.get("resumable") is True and isinstance(handle, str) and handle:
            self._handle = handle
            self.handle_changes += 1
            self._last_update_resumable = True
            # The session state behind this handle includes every call issued so far.
            self._calls_after_handle.clear()
            out.append(ResumptionPoint(message_index(body.get("lastConsumedClientMessageIndex"))))
        else:
            # Not a resumption point: keep the last good handle, but resuming now loses state.
            self._last_update_resumable = False

    def _on_voice_activity(self, message: dict[str, Any], out: list[Output]) -> None:
        # voiceActivity (3.1 live models; audioOffset is a Duration into the input) or the
        # Vertex voiceActivityDetectionSignal; most models send neither.
        kind: object = None
        audio_ms: int | None = None
        if isinstance(message.get("voiceActivity"), dict):
            kind = message["voiceActivity"].get("voiceActivityType")
            offset = parse_duration(message["voiceActivity"].get("audioOffset"))
            audio_ms = None if offset is None else round(offset * 1000)
        elif isinstance(message.get("voiceActivityDetectionSignal"), dict):
            kind = message["voiceActivityDetectionSignal"].get("vadSignalType")
        if kind in ("ACTIVITY_START", "VAD_SIGNAL_TYPE_SOS"):
            out.append(Emit("speech-started", SpeechEvent(audio_ms=audio_ms)))
        elif kind in ("ACTIVITY_END", "VAD_SIGNAL_TYPE_EOS"):
            out.append(Emit("speech-stopped", SpeechEvent(audio_ms=audio_ms)))

    def _on_tool_call(self, body: dict[str, Any], out: list[Output]) -> None:
        calls = body.get("functionCalls") or []
        if not isinstance(calls, list):
            raise ProviderProtocolError("toolCall.functionCalls must be a list")
        self._open_turn()
        for raw_call in calls:
            call = _obj(raw_call, "toolCall.functionCalls[]")
            name = call.get("name")
            if not isinstance(name, str) or not name:
                raise ProviderProtocolError(f"function call without a name: {call!r}")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                # Vertex AI may omit ids; the response must still carry one.
                self._call_seq += 1
                call_id = f"gemini-call-{self._id_prefix}-{self._call_seq}"
            args = call.get("args") or {}
            if not isinstance(args, dict):
                raise ProviderProtocolError(
                    f"function call {name!r} args must be an object, got {args!r}"
                )
            self._pending[call_id] = name
            # a call the server issues is wanted, even if an earlier one with its id was
            # cancelled (e.g. one lost in a resume from an older handle, issued again)
            self._cancelled.discard(call_id)
            self._calls_after_handle.add(call_id)
            self._remember("model", f"[called {name}({orjson.dumps(args).decode()})]")
            out.append(Emit("tool-call", ToolCallEvent(call_id=call_id, name=name, arguments=args)))

    def _on_cancellation(self, body: dict[str, Any], out: list[Output]) -> None:
        ids = body.get("ids") or []
        if not isinstance(ids, list):
            raise ProviderProtocolError("toolCallCancellation.ids must be a list")
        cancelled = []
        for call_id in ids:
            if not isinstance(call_id, str):
                continue
            self._cancelled.add(call_id)
            self._calls_after_handle.discard(call_id)
            if self._pending.pop(call_id, None) is not None:
                cancelled.append(call_id)
        if cancelled:
            out.append(Emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=cancelled)))

    def _on_content(self, body: dict[str, Any], out: list[Output]) -> None:
        if "inputTranscription" in body:
            self._on_input_transcription(
                _obj(body["inputTranscription"], "inputTranscription"), out
            )
        model_turn = body.get("modelTurn")
        if model_turn is not None:
            parts = _obj(model_turn, "modelTurn").get("parts") or []
            if not isinstance(parts, list):
                raise ProviderProtocolError("modelTurn.parts must be a list")
            for part in parts:
                self._on_part(_obj(part, "modelTurn.parts[]"), out)
        if "outputTranscription" in body:
            text = _obj(body["outputTranscription"], "outputTranscription").get("text")
            if isinstance(text, str) and text:
                self._assistant_text(text, out)
        if body.get("interrupted") is True:
            self._open_turn()
            if not self._interrupted:
                self._interrupted = True
                # Whatever the resampler holds belongs to the cut reply: discard it.
                for converter in self._outputs.values():
                    converter.flush()
                out.append(Emit("interrupted", InterruptedEvent(response_id=self._response_id)))
        if body.get("generationComplete") is True and self._response_id is not None:
            self._flush_audio(out)
        if body.get("turnComplete") is True:
            out.extend(self._finish_turn("cancelled" if self._interrupted else "completed"))

    def _on_input_transcription(self, body: dict[str, Any], out: list[Output]) -> None:
        text = body.get("text")
        if isinstance(text, str) and text:
            if not self._user_text:
                self._user_seq += 1
            self._user_text.append(text)
            out.append(
                Emit(
                    "transcript",
                    TranscriptEvent(role="user", text=text, final=False, item_id=self._user_item),
                )
            )
        if body.get("finished") is True:
            self._finish_user_transcript(out)

    @property
    def _user_item(self) -> str:
        return f"gemini-user-{self._user_seq}"

    def _finish_user_transcript(self, out: list[Output]) -> None:
        if not self._user_text:
            return
        text = "".join(self._user_text)
        self._user_text.clear()
        self._remember("user", text)
        out.append(
            Emit(
                "transcript",
                TranscriptEvent(role="user", text=text, final=True, item_id=self._user_item),
            )
        )

    def _on_part(self, part: dict[str, Any], out: list[Output]) -> None:
        if part.get("thought") is True:
            return
        inline = part.get("inlineData")
        if inline is not None:
            blob = _obj(inline, "inlineData")
            mime = blob.get("mimeType", "")
            if not isinstance(mime, str) or not mime.startswith("audio/pcm"):
                log.debug("ignoring non-audio inlineData of type %r", mime)
                return
            match = _RATE.search(mime)
            rate = int(match.group(1)) if match else OUTPUT_SAMPLE_RATE
            data = blob.get("data") or ""
            if not isinstance(data, str):
                raise ProviderProtocolError("inlineData.data must be a base64 string")
            try:
                # protobuf JSON writes standard base64 and accepts the URL-safe alphabet too
                pcm = base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ProviderProtocolError(f"inlineData.data is not valid base64 ({exc})") from exc
            self._open_turn()
            self._emit_audio(self._output_converter(rate).convert(pcm), out)
            return
        text = part.get("text")
        if isinstance(text, str) and text and self._text_modality:
            self._assistant_text(text, out)

    @property
    def _text_modality(self) -> bool:
        overrides = self._config.provider_options.get("setup") or {}
        modalities = (overrides.get("generationConfig") or {}).get("responseModalities")
        return isinstance(modalities, list) and "TEXT" in modalities

    def _output_converter(self, rate: int) -> AudioConverter:
        converter = self._outputs.get(rate)
        if converter is None:
            if rate % 2 or rate <= 0:
                raise ProviderProtocolError(f"model audio rate {rate} is not a valid PCM rate")
            converter = AudioConverter(
                AudioFormat(encoding="pcm16", sample_rate=rate), self._config.output_audio
            )
            self._outputs[rate] = converter
        return converter

    def _emit_audio(self, data: bytes, out: list[Output]) -> None:
        if data:
            out.append(
                Emit(
                    "audio",
                    AudioEvent(
                        data=data,
                        sample_rate=self._config.output_audio.sample_rate,
                        response_id=self._response_id,
                    ),
                )
            )

    def _flush_audio(self, out: list[Output]) -> None:
        for converter in self._outputs.values():
            self._emit_audio(converter.flush(), out)

    def _assistant_text(self, text: str, out: list[Output]) -> None:
        self._open_turn()
        self._out_text.append(text)
        out.append(
            Emit(
                "transcript",
                TranscriptEvent(
                    role="assistant", text=text, final=False, item_id=self._response_id
                ),
            )
        )

    def _open_turn(self) -> None:
        if self._response_id is None:
            self._response_seq += 1
            self._response_id = f"gemini-turn-{self._id_prefix}-{self._response_seq}"
            self._interrupted = False

    def _finish_turn(self, status: Literal["completed", "cancelled", "incomplete"]) -> list[Output]:
        self._open_turn()
        out: list[Output] = []
        if status == "completed":
            self._flush_audio(out)
        else:
            for converter in self._outputs.values():
                converter.flush()
        if status != "cancelled":
            # After a barge-in the transcription that follows is the new utterance.
            self._finish_user_transcript(out)
        if self._out_text:
            text = "".join(self._out_text)
            self._out_text.clear()
            self._remember("model", text)
            out.append(
                Emit(
                    "transcript",
                    TranscriptEvent(
                        role="assistant", text=text, final=True, item_id=self._response_id
                    ),
                )
            )
        out.append(
            Emit(
                "response-done",
                ResponseDoneEvent(response_id=self._response_id, status=status, usage=self._usage),
            )
        )
        self._response_id = None
        self._interrupted = False
        self._usage = None
        return out

    def _remember(self, role: Literal["user", "model"], text: str) -> None:
        self.history.append((role, text))
