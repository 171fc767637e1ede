"""``GeminiSimulator``: a loopback server speaking the Gemini Live (BidiGenerateContent) protocol.

Clients connect exactly as to ``wss://generativelanguage.googleapis.com/ws/google.ai.
generativelanguage.v1beta.GenerativeService.BidiGenerateContent`` (v1alpha, v1 and the
``...Constrained`` ephemeral-token method too), the Gemini Developer API, or to Vertex AI's
``/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent`` (``v1`` too;
:attr:`GeminiSimulator.vertex_url`); only the URL differs. Behaviour follows
``shared/reference/gemini-live.md``:

- Server frames are **binary** UTF-8 JSON, camelCase; ``setupComplete`` is the first frame.
  Client frames may be text or binary, camelCase or snake_case at any depth.
- The first client frame must be ``setup``. An unknown field, a wrong type, a model name that is
  not ``models/<id>`` (or a Vertex ``projects/.../models/<id>``) or a frame other than ``setup``
  closes with **1007** "Request contains an invalid argument."; a model id containing
  ``missing`` closes with **1008** and the real "is not found for API version" reason. With
  ``script.api_key`` set, any other key (``?key=``, ``x-goog-api-key``, ``?access_token=`` or
  ``Authorization``) is accepted at HTTP level and then closed with 1008 "API key not valid.
  Please pass a valid API key." (the real service's wording).
- Input: ``realtimeInput.audio`` (also the deprecated ``mediaChunks``, for SDK compatibility),
  PCM16 at the rate in ``mimeType`` (16 kHz default), energy VAD from the shared model unless
  ``automaticActivityDetection.disabled`` (then ``activityStart`` / ``activityEnd``);
  ``audioStreamEnd`` ends an utterance in progress; ``realtimeInput.text`` and
  ``clientContent`` (``turnComplete: true``) are text turns; ``clientContent`` turns are
  appended to the conversation (a seed after a reconnect).
- Automatic VAD reports ``voiceActivity`` (``ACTIVITY_START`` / ``ACTIVITY_END`` with
  ``audioOffset``) as gemini-3.1-flash-live-preview does (other models send none).
- Replies: ``serverContent.modelTurn.parts[].inlineData`` (``audio/pcm;rate=24000``) paced by
  ``script.speed``, ``outputTranscription`` fragments, ``inputTranscription`` (the last
  fragment ``finished``), ``generationComplete``, then ``turnComplete`` with ``usageMetadata``.
  Barge-in (VAD start, ``activityStart`` or a text turn during a reply, unless
  ``activityHandling`` is ``NO_INTERRUPTION``): ``interrupted`` then ``turnComplete``, no
  ``generationComplete``. Tool calls: ``toolCall`` (the model turn stays open); the reply that
  speaks the result follows ``toolResponse``; a barge-in while a call is pending sends
  ``toolCallCancellation`` first.
- Resumption: with ``sessionResumption`` in the setup the server sends
  ``sessionResumptionUpdate`` after ``setupComplete`` and after every finished turn (resumable,
  a new handle), every ``resumption_interval_s`` while nothing is generated and no tool call is
  pending (when set), and ``{resumable: false}`` when a reply or tool call starts. Handles are
  only issued at such resumable points. A handle snapshots the session as of the last client
  message processed: the conversation and the caller audio consumed so far (the client message
  index counts per connection, ``setup`` 0, every later message 1, 2, ...). Resuming with it on
  a new socket restores exactly that: whatever the old socket got after the snapshot is not in
  the resumed session (:meth:`GeminiSimulator.consumed_audio` shows what a session holds).
  With ``sessionResumption.transparent`` (Vertex AI only) every resumable update carries
  ``lastConsumedClientMessageIndex`` (a string, as protobuf JSON writes int64). On the
  Developer API path ``transparent`` closes with **1007** "Invalid JSON payload received.
  Unknown name "transparent" at 'setup.session_resumption': Cannot find field." (our
  assumption of the real answer: the field is not in that API's schema and google-genai refuses
  to send it there). An unknown handle closes with 1007; a resume while the session's previous
  socket is still open closes with **1011** (as the real service does).
- ``goAway`` (``timeLeft`` as a Duration string) after ``script.go_away_after_s`` or
  :meth:`GeminiSimulator.go_away`, then a close with 1011 "Deadline expired before operation
  could complete." once ``timeLeft`` has passed; ``drop(code)`` closes with any code.

Simulator-specific choices where the real service is undocumented: a ``toolResponse`` for an
unknown or cancelled id is ignored; an unknown handle closes with 1007;
``script.errors_after_turn`` and ``script.max_session_s`` are OpenAI-only (Gemini reports errors
as close frames). Per-connection timestamps (``setup_at``, ``first_audio_at``, ``go_away_at``,
``closed_at``, monotonic seconds) on ``conn.session`` let tests measure connection switches.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.http11 import Request
from websockets.protocol import State

from protocol.errors import UsageError

from .base import BaseSimulator, HttpRejection, SessionHandler, SimConnection
from .model import (
    ConversationItem,
    EnergyVAD,
    SimScript,
    SimulatedModel,
    SpeakDecision,
    ToolCallDecision,
    encoded_chunks,
)

__all__ = ["VERTEX_PATH", "GeminiSimulator"]

logger = logging.getLogger(__name__)

_PATH_RE = re.compile(
    r"^/ws/google\.ai\.generativelanguage\.(v1alpha|v1beta|v1)\.GenerativeService\."
    r"BidiGenerateContent(Constrained)?$"
)
_VERTEX_PATH_RE = re.compile(
    r"^/ws/google\.cloud\.aiplatform\.(v1beta1|v1)\.LlmBidiService/BidiGenerateContent$"
)
_MODEL_RE = re.compile(
    r"^(models/|(projects/[^/]+/locations/[^/]+/)?publishers/[^/]+/models/)[A-Za-z0-9._\-]+$"
)
_RATE_RE = re.compile(r"rate=(\d+)")
#: The Vertex AI endpoint's path the simulator serves next to the Developer API's.
VERTEX_PATH = "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"

INVALID_ARGUMENT = "Request contains an invalid argument."
BAD_KEY = "API key not valid. Please pass a valid API key."
INTERNAL = "Internal error encountered."
DEADLINE = "Deadline expired before operation could complete."
#: Our assumption of the Developer API's answer to ``sessionResumption.transparent`` (the
#: wording of Google's proto3 JSON parser for a field its schema lacks).
NO_TRANSPARENT = (
    'Invalid JSON payload received. Unknown name "transparent" at '
    "'setup.session_resumption': Cannot find field."
)
OUTPUT_MIME = "audio/pcm;rate=24000"
#: Handles kept per session (older ones stop working, bounding memory in long sessions).
HANDLES_PER_SESSION = 8

# Fields of a setup the simulator knows (camelCase); anything else is an invalid argument.
_SETUP_FIELDS = frozenset(
    {
        "model",
        "generationConfig",
        "systemInstruction",
        "tools",
        "realtimeInputConfig",
        "sessionResumption",
        "contextWindowCompression",
        "inputAudioTranscription",
        "outputAudioTranscription",
        "proactivity",
        "explicitVadSignal",
        "historyConfig",
    }
)
_GENERATION_FIELDS = frozenset(
    {
        "responseModalities",
        "speechConfig",
        "temperature",
        "maxOutputTokens",
        "topP",
        "topK",
        "candidateCount",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "thinkingConfig",
        "enableAffectiveDialog",
        "mediaResolution",
    }
)
_CLIENT_MESSAGES = frozenset(
    {"setup", "clientContent", "realtimeInput", "toolResponse", "contextUpdate"}
)
# Keys under which clients put their own data; their contents keep the client's casing.
_OPAQUE = frozenset(
    {"args", "response", "parameters", "parametersJsonSchema", "responseJsonSchema"}
)


class _Invalid(ValueError):
    """A client frame the real service would refuse: close with ``code`` and ``reason``."""

    def __init__(self, reason: str = INVALID_ARGUMENT, code: int = 1007) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camelize(value: Any) -> Any:
    """Client JSON with every key in camelCase (proto3 JSON accepts both casings)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _camel(key) if isinstance(key, str) else key
            out[name] = item if name in _OPAQUE else _camelize(item)
        return out
    if isinstance(value, list):
        return [_camelize(item) for item in value]
    return value


def _b64decode(data: object) -> bytes:
    """Standard or URL-safe base64 (pydantic, hence the official SDK, sends URL-safe)."""
    if not isinstance(data, str):
        raise _Invalid()
    try:
        return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Invalid() from exc


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration: ``"50s"``, ``"0.500s"``."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:.3f}s"


def _obj(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid()
    return value


#: Caller audio in a session's state: (connection, bytes of its input consumed) per connection
#: it lived on, oldest first (each connection's input counts from its first byte).
Lineage = tuple[tuple[SimConnection, int], ...]


@dataclass
class _Session:
    """What survives a connection: the conversation behind the handles of one session."""

    id: str
    handles: deque[str] = field(default_factory=deque)
    conn: SimConnection | None = None


@dataclass(frozen=True)
class _Snapshot:
    """What a handle restores: the session, its model state and the caller audio consumed."""

    session: _Session
    model: SimulatedModel
    lineage: Lineage


@dataclass
class _Turn:
    """One model turn in flight (a spoken reply, or a tool call waiting for its result)."""

    decision: SpeakDecision | ToolCallDecision
    cancelled: bool = False
    wake: asyncio.Future[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    output_text: str = ""
    output_audio_ms: float = 0.0

    def cancel(self) -> None:
        self.cancelled = True
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class _GeminiSession(SessionHandler):
    """The Gemini Live protocol on one connection."""

    simulator: GeminiSimulator

    def __init__(self, simulator: GeminiSimulator, conn: SimConnection) -> None:
        super().__init__(simulator, conn)
        conn.model.id_factory = simulator.new_id
        self.script: SimScript = simulator.script
        self.setup: dict[str, Any] | None = None
        self.session: _Session | None = None
        self.turn: _Turn | None = None
        self.pending_calls: dict[str, str] = {}
        self.input_ms = 0.0
        self.vad: EnergyVAD | None = None
        self.vad_rate = 0
        self.vad_base_ms = 0.0  # input position when the VAD was (re)built
        self.activity_open = False
        self.activity_text: list[str] = []
        self.heard_speech = False
        #: Vertex AI endpoint (else the Developer API); transparent resumption asked for
        self.vertex = bool(_VERTEX_PATH_RE.match(conn.path))
        self.transparent = False
        #: client messages processed on this connection (setup is message 0)
        self.message_index = 0
        #: caller audio of earlier connections in this session's state (from the handle)
        self.lineage: Lineage = ()
        #: monotonic timestamps for tests (None until it happened)
        self.setup_at: float | None = None
        self.first_audio_at: float | None = None
        self.go_away_at: float | None = None
        self.closed_at: float | None = None

    @property
    def model(self) -> SimulatedModel:
        return self.conn.model

    @property
    def consumed_audio(self) -> bytes:
        """The caller audio this connection's session state holds, in order: what the resumed
        handle carried, then everything this connection got (empty with ``record=False``)."""
        parts = [conn.audio_in[:end] for conn, end in self.lineage]
        parts.append(self.conn.audio_in)
        return b"".join(parts)

    # ---- sending ------------------------------------------------------------------------------

    async def send(self, frame: dict[str, Any]) -> None:
        await self.conn.send_json(frame, binary=True)

    async def close(self, code: int, reason: str) -> None:
        # a close reason is at most 123 bytes on the wire; the service truncates long ones too
        await self.conn.close(code, reason.encode()[:123].decode("utf-8", "ignore"))

    # ---- lifecycle --------------------------------------------------------------------------

    async def on_close(self) -> None:
        self.closed_at = time.monotonic()
        if self.turn is not None:
            self.turn.cancel()

    async def on_message(self, raw: str | bytes, frame: dict[str, Any] | None) -> None:
        try:
            if frame is None or len(frame) != 1:
                raise _Invalid()
            message = _camelize(frame)
            (kind,) = message
            if kind not in _CLIENT_MESSAGES:
                raise _Invalid()
            if self.setup is None:
                if kind != "setup":
                    raise _Invalid()
                await self._setup(_obj(message["setup"]))
                return
            if kind == "setup":
                raise _Invalid()  # one setup per connection
            self.message_index += 1
            body = _obj(message[kind])
            if kind == "realtimeInput":
                await self._realtime_input(body)
            elif kind == "clientContent":
                await self._client_content(body)
            elif kind == "toolResponse":
                await self._tool_response(body)
            else:  # contextUpdate: undocumented, refused like an unsupported field
                raise _Invalid()
        except _Invalid as exc:
            await self.close(exc.code, exc.reason)

    # ---- setup and resumption ---------------------------------------------------------------

    async def _setup(self, setup: dict[str, Any]) -> None:
        key_problem = self.simulator.key_problem(self.conn)
        if key_problem is not None:
            raise _Invalid(key_problem, 1008)
        if set(setup) - _SETUP_FIELDS:
            raise _Invalid()
        model = setup.get("model")
        if not isinstance(model, str) or not _MODEL_RE.match(model):
            raise _Invalid()
        if "missing" in model:
            version = _PATH_RE.match(self.conn.path)
            api = version.group(1) if version else "v1beta"
            raise _Invalid(
                f"{model} is not found for API version {api}, or is not supported for "
                "bidiGenerateContent.",
                1008,
            )
        generation = _obj(setup.get("generationConfig"))
        if set(generation) - _GENERATION_FIELDS:
            raise _Invalid()
        modalities = generation.get("responseModalities", ["AUDIO"])
        if not isinstance(modalities, list) or not set(modalities) <= {"AUDIO", "TEXT"}:
            raise _Invalid()
        for name in ("systemInstruction", "realtimeInputConfig", "sessionResumption"):
            _obj(setup.get(name))
        resumption = setup.get("sessionResumption")
        options = _obj(resumption)
        if "transparent" in options and not self.vertex:
            raise _Invalid(NO_TRANSPARENT)
        if set(options) - {"handle", "transparent"} or not isinstance(
            options.get("transparent", False), bool
        ):
            raise _Invalid()
        self.transparent = options.get("transparent") is True
        tools = setup.get("tools", [])
        if not isinstance(tools, list):
            raise _Invalid()
        for tool in tools:
            for declaration in _obj(tool).get("functionDeclarations", []):
                if not isinstance(_obj(declaration).get("name"), str):
                    raise _Invalid()
        handle = options.get("handle")
        session = await self._resume(handle) if handle else self.simulator.start_session(self.conn)
        self.session = session
        self.setup = setup
        self._configure_input()
        self.setup_at = time.monotonic()
        if self.simulator.setup_delay_s > 0:
            await asyncio.sleep(self.simulator.setup_delay_s)
        await self.send({"setupComplete": {"sessionId": session.id}})
        if resumption is not None:
            await self._resumption_update()
        if self.script.go_away_after_s is not None:
            self.conn.spawn(self._scheduled_go_away(self.script.go_away_after_s), "go-away")
        if resumption is not None and self.simulator.resumption_interval_s:
            self.conn.spawn(self._periodic_updates(), "resumption-updates")

    async def _resume(self, handle: object) -> _Session:
        restored = self.simulator.restore(handle, self.conn)
        if restored is None:
            raise _Invalid()
        session, model, lineage = restored
        previous = session.conn
        if (
            previous is not None
            and previous is not self.conn
            and previous.ws is not None
            and previous.ws.state is State.OPEN
        ):
            # The real service refuses a resume while the session's old socket is open.
            raise _Invalid(INTERNAL, 1011)
        self.conn.model = model
        self.lineage = lineage
        session.conn = self.conn
        self.simulator.notify()
        return session

    @property
    def resumable(self) -> bool:
        """No reply is being generated and no tool call is pending: a handle may be issued."""
        return self.turn is None and not self.pending_calls

    async def _resumption_update(self) -> None:
        if self.setup is None or "sessionResumption" not in self.setup or self.session is None:
            return
        if not self.resumable:
            await self.send({"sessionResumptionUpdate": {"resumable": False}})
            return
        lineage = (*self.lineage, (self.conn, self.conn.audio_in_bytes))
        handle = self.simulator.issue_handle(_Snapshot(self.session, self.model, lineage))
        update: dict[str, Any] = {"newHandle": handle, "resumable": True}
        if self.transparent:
            # everything processed so far is in the snapshot; int64 travels as a JSON string
            update["lastConsumedClientMessageIndex"] = str(self.message_index)
        await self.send({"sessionResumptionUpdate": update})

    async def _periodic_updates(self) -> None:
        """A resumable handle every ``resumption_interval_s`` while the session is resumable."""
        while not self.conn.closed:
            await asyncio.sleep(self.simulator.resumption_interval_s or 1.0)
            if self.resumable and self.simulator.resumption_interval_s:
                await self._resumption_update()

    # ---- goAway -------------------------------------------------------------------------------

    async def _scheduled_go_away(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await self.go_away(self.script.go_away_time_left_s)

    async def go_away(self, time_left_s: float) -> None:
        """Send ``goAway`` now and close once ``time_left_s`` has passed."""
        if self.setup is None or self.conn.closed:
            return
        self.go_away_at = time.monotonic()
        await self.send({"goAway": {"timeLeft": _duration(time_left_s)}})
        self.conn.spawn(self._close_after(time_left_s), "go-away-close")

    async def _close_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.close(1011, DEADLINE)

    # ---- input --------------------------------------------------------------------------------

    @property
    def _detection(self) -> dict[str, Any]:
        assert self.setup is not None
        return _obj(_obj(self.setup.get("realtimeInputConfig")).get("automaticActivityDetection"))

    @property
    def _interrupts(self) -> bool:
        assert self.setup is not None
        config = _obj(self.setup.get("realtimeInputConfig"))
        return config.get("activityHandling") != "NO_INTERRUPTION"

    def _configure_input(self, rate: int = 16000) -> None:
        detection = self._detection
        self.vad_rate = rate
        self.vad_base_ms = self.input_ms
        if detection.get("disabled") is True:
            self.vad = None
            return
        sensitivity = str(detection.get("startOfSpeechSensitivity"))
        scale = {"START_SENSITIVITY_LOW": 2.0, "START_SENSITIVITY_HIGH": 0.5}.get(sensitivity, 1.0)
        silence = detection.get("silenceDurationMs")
        self.vad = self.model.new_vad(
            rate, scale, silence if isinstance(silence, int) and silence >= 0 else None
        )

    async def _realtime_input(self, body: dict[str, Any]) -> None:
        if len(body) != 1:
            raise _Invalid()
        (kind,) = body
        value = body[kind]
        if kind == "audio":
            await self._audio(_obj(value))
        elif kind == "mediaChunks":
            if not isinstance(value, list):
                raise _Invalid()
            for chunk in value:
                await self._audio(_obj(chunk))
        elif kind == "text":
            if not isinstance(value, str):
                raise _Invalid()
            if self.vad is None and self.activity_open:
                self.activity_text.append(value)
            else:
                await self._barge_in()
                await self._user_turn(value, audio=False)
        elif kind == "audioStreamEnd":
            if self.vad is not None and self.vad.in_speech:
                self.vad.reset()
                await self._user_turn(self.script.user_transcript, audio=True)
        elif kind == "activityStart":
            if self.vad is not None:
                raise _Invalid()  # only with automatic activity detection disabled
            self.activity_open = True
            self.activity_text = []
            self.heard_speech = False
            await self._barge_in()
        elif kind == "activityEnd":
            if self.vad is not None or not self.activity_open:
                raise _Invalid()
            self.activity_open = False
            text = " ".join(self.activity_text)
            if text or self.heard_speech:
                await self._user_turn(text or self.script.user_transcript, audio=not text)
        elif kind == "video":
            _obj(value)
        else:
            raise _Invalid()

    async def _audio(self, blob: dict[str, Any]) -> None:
        mime = blob.get("mimeType", "audio/pcm")
        if not isinstance(mime, str) or not mime.startswith("audio/pcm"):
            raise _Invalid()
        match = _RATE_RE.search(mime)
        rate = int(match.group(1)) if match else 16000
        pcm = _b64decode(blob.get("data"))
        if len(pcm) % 2 or rate <= 0 or rate % 100:
            raise _Invalid()
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self.conn.add_audio_in(pcm)
        samples = np.frombuffer(pcm, dtype="<i2")
        self.input_ms += samples.size * 1000.0 / rate
        if self.vad is None:
            if self.activity_open and samples.size:
                self.heard_speech = True
            return
        if rate != self.vad_rate:
            self._configure_input(rate)
        for event in self.vad.feed(samples):
            offset = _duration((self.vad_base_ms + event.audio_ms) / 1000)
            kind = "ACTIVITY_START" if event.kind == "start" else "ACTIVITY_END"
            await self.send({"voiceActivity": {"voiceActivityType": kind, "audioOffset": offset}})
            if event.kind == "start":
                await self._barge_in()
            else:
                await self._user_turn(self.script.user_transcript, audio=True)

    async def _barge_in(self) -> None:
        if not self._interrupts:
            return
        if self.pending_calls:
            ids = list(self.pending_calls)
            self.pending_calls.clear()
            await self.send({"toolCallCancellation": {"ids": ids}})
        turn = self.turn
        if turn is not None:
            turn.cancel()
            if isinstance(turn.decision, ToolCallDecision) and turn.finished.is_set():
                await self._end_turn(turn)  # it was waiting for a tool result: cut it now
            else:
                await turn.finished.wait()

    async def _user_turn(self, text: str, *, audio: bool) -> None:
        self.model.conversation.add(
            ConversationItem(
                id=self.model.id_factory("item"),
                kind="message",
                role="user",
                text=text,
                audio=audio,
            )
        )
        if audio:
            self.model.commit_user_turn()
        self.simulator.notify()
        if audio and self.setup is not None and "inputAudioTranscription" in self.setup:
            words = text.split(" ")
            for index, word in enumerate(words):
                last = index == len(words) - 1
                fragment: dict[str, Any] = {"text": word if last else word + " "}
                if last:
                    fragment["finished"] = True
                await self.send({"serverContent": {"inputTranscription": fragment}})
        await self._respond()

    async def _client_content(self, body: dict[str, Any]) -> None:
        turns = body.get("turns", [])
        if not isinstance(turns, list):
            raise _Invalid()
        if turns:
            await self._barge_in()
        for content in turns:
            content = _obj(content)
            role = content.get("role", "user")
            if role not in ("user", "model"):
                raise _Invalid()
            parts = content.get("parts", [])
            if not isinstance(parts, list):
                raise _Invalid()
            text = " ".join(
                part["text"] for part in parts if isinstance(_obj(part).get("text"), str)
            )
            self.model.conversation.add(
                ConversationItem(
                    id=self.model.id_factory("item"),
                    kind="message",
                    role="user" if role == "user" else "assistant",
                    text=text,
                )
            )
        self.simulator.notify()
        if body.get("turnComplete") is True:
            await self._respond()

    async def _tool_response(self, body: dict[str, Any]) -> None:
        responses = body.get("functionResponses", [])
        if not isinstance(responses, list):
            raise _Invalid()
        for item in responses:
            item = _obj(item)
            call_id, name = item.get("id"), item.get("name")
            if not isinstance(name, str) or not isinstance(_obj(item.get("response")), dict):
                raise _Invalid()
            if call_id not in self.pending_calls:
                logger.info("ignoring a toolResponse for unknown or cancelled call %r", call_id)
                continue
            del self.pending_calls[call_id]
            self.model.conversation.add(
                ConversationItem(
                    id=self.model.id_factory("item"),
                    kind="function_call_output",
                    call_id=call_id,
                    name=name,
                    output=_tool_output(item["response"]),
                )
            )
        self.simulator.notify()
        turn = self.turn
        if not self.pending_calls and turn is not None and turn.finished.is_set():
            # The tool-call turn goes on: the model now speaks the result.
            self.turn = None
            await self._respond(continuing=turn)

    # ---- replies ------------------------------------------------------------------------------

    def _tool_names(self) -> list[str]:
        assert self.setup is not None
        names: list[str] = []
        for tool in self.setup.get("tools", []):
            for declaration in tool.get("functionDeclarations", []):
                names.append(declaration["name"])
        return names

    async def _respond(self, continuing: _Turn | None = None) -> None:
        active = self.turn
        if active is not None:
            if not active.finished.is_set():
                # NO_INTERRUPTION: answer once the current reply is over.
                self.conn.spawn(self._respond_after(active), "respond-after")
                return
            if self.pending_calls:
                return
        decision = self.model.decide(self._tool_names())
        turn = _Turn(decision)
        if continuing is not None:
            turn.output_text = continuing.output_text
        self.turn = turn
        await self._resumption_update()
        self.conn.spawn(self._run(turn), "model-turn")

    async def _respond_after(self, active: _Turn) -> None:
        await active.finished.wait()
        if self.turn is None:
            await self._respond()

    async def _pause(self, turn: _Turn, seconds: float) -> None:
        if seconds <= 0 or turn.cancelled:
            return
        loop = asyncio.get_running_loop()
        turn.wake = loop.create_future()
        handle = loop.call_later(seconds, _resolve, turn.wake)
        try:
            await turn.wake
        finally:
            handle.cancel()
            turn.wake = None

    async def _run(self, turn: _Turn) -> None:
        try:
            decision = turn.decision
            if isinstance(decision, ToolCallDecision):
                self.pending_calls[decision.call_id] = decision.name
                self.model.conversation.add(
                    ConversationItem(
                        id=self.model.id_factory("item"),
                        kind="function_call",
                        name=decision.name,
                        call_id=decision.call_id,
                        arguments=decision.arguments_json,
                    )
                )
                await self.send(
                    {
                        "toolCall": {
                            "functionCalls": [
                                {
                                    "id": decision.call_id,
                                    "name": decision.name,
                                    "args": dict(decision.arguments),
                                }
                            ]
                        }
                    }
                )
                self.simulator.notify()
                return  # the turn stays open until the toolResponse (or a barge-in)
            await self._speak(turn, decision)
            await self._end_turn(turn)
        finally:
            turn.finished.set()

    async def _speak(self, turn: _Turn, say: SpeakDecision) -> None:
        plan = say.plan(self.script.chunk_ms)
        payloads = encoded_chunks(plan, "pcm16", 24000)
        transcribe = self.setup is not None and "outputAudioTranscription" in self.setup
        loop = asyncio.get_running_loop()
        start = loop.time()
        spoken = ""
        for index, chunk in enumerate(plan.chunks):
            speed = self.script.speed
            if speed > 0:
                await self._pause(turn, start + chunk.start_ms / 1000 / speed - loop.time())
            if turn.cancelled:
                break
            part = {"inlineData": {"mimeType": OUTPUT_MIME, "data": payloads[index]}}
            await self.send({"serverContent": {"modelTurn": {"parts": [part]}}})
            turn.output_audio_ms += chunk.end_ms - chunk.start_ms
            for delta in chunk.transcript:
                spoken += delta
                if transcribe:
                    await self.send({"serverContent": {"outputTranscription": {"text": delta}}})
        turn.output_text += spoken
        self.model.conversation.add(
            ConversationItem(
                id=self.model.id_factory("item"),
                kind="message",
                role="assistant",
                text=spoken,
                audio=True,
                audio_ms=turn.output_audio_ms,
                status="incomplete" if turn.cancelled else "completed",
            )
        )

    async def _end_turn(self, turn: _Turn) -> None:
        if self.turn is turn:
            self.turn = None
        if self.conn.closed:
            return
        if turn.cancelled:
            await self.send({"serverContent": {"interrupted": True}})
        else:
            await self.send({"serverContent": {"generationComplete": True}})
        usage = self.model.usage(turn.output_text, turn.output_audio_ms, self.input_ms)
        await self.send(
            {
                "serverContent": {"turnComplete": True},
                "usageMetadata": {
                    "promptTokenCount": usage.input_total,
                    "responseTokenCount": usage.output_total,
                    "totalTokenCount": usage.total,
                    "promptTokensDetails": [
                        {"modality": "TEXT", "tokenCount": usage.input_text},
                        {"modality": "AUDIO", "tokenCount": usage.input_audio},
                    ],
                    "responseTokensDetails": [
                        {"modality": "AUDIO", "tokenCount": usage.output_audio}
                    ],
                },
            }
        )
        await self._resumption_update()
        self.simulator.notify()


def _tool_output(response: dict[str, Any]) -> str:
    """The text a function response gives the simulated model to speak."""
    if set(response) == {"output"} and isinstance(response["output"], str):
        return response["output"]
    return json.dumps(response, separators=(",", ":"))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class GeminiSimulator(BaseSimulator):
    """Loopback Gemini Live server (test API in ``docs/simulator.md``).

    ``url`` is the v1beta ``BidiGenerateContent`` endpoint on the loopback host.
    ``validate=True`` checks every frame against ``google.genai.types.LiveServerMessage``
    before sending it (needs the ``google-genai`` package). ``setup_delay_s`` (an addition to
    the pinned API) delays every ``setupComplete``, like the real service's setup latency.
    ``resumption_interval_s`` (an addition, default None) also issues a resumable handle that
    often while a session is at a resumable point, not only after setup and turns.
    :attr:`vertex_url` is the Vertex AI endpoint (transparent resumption allowed).
    """

    path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"

    def __init__(
        self,
        script: SimScript | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        validate: bool = False,
        setup_delay_s: float = 0.0,
        resumption_interval_s: float | None = None,
    ) -> None:
        super().__init__(script, host=host, port=port, record=record, validate=validate)
        self.setup_delay_s = setup_delay_s
        self.resumption_interval_s = resumption_interval_s
        self._handles: dict[str, _Snapshot] = {}
        self._sessions: dict[str, _Session] = {}
        self._id_prefix = secrets.token_hex(3)
        self._id_counter = 0

    # ---- front-end hooks --------------------------------------------------------------------

    @property
    def vertex_url(self) -> str:
        """``ws://HOST:PORT/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/...``: the
        Vertex AI endpoint on the loopback host."""
        base = self.url.split("/ws/", 1)[0]
        return f"{base}{VERTEX_PATH}"

    def check_request(self, request: Request) -> HttpRejection | None:
        path = urlsplit(request.path).path
        if not _PATH_RE.match(path) and not _VERTEX_PATH_RE.match(path):
            return HttpRejection(
                404,
                {"error": {"code": 404, "message": f"Not found: {path}", "status": "NOT_FOUND"}},
            )
        return None

    def new_session(self, conn: SimConnection) -> SessionHandler:
        return _GeminiSession(self, conn)

    def validate_server_frame(self, frame: dict[str, Any]) -> None:
        from google.genai import types

        if len(frame.keys() - {"usageMetadata"}) != 1:
            raise ValueError(f"one server message per frame expected, got {sorted(frame)}")
        types.LiveServerMessage.model_validate(frame)

    def is_audio_frame(self, frame: dict[str, Any], *, outgoing: bool) -> bool:
        if outgoing:
            content = frame.get("serverContent")
            return isinstance(content, dict) and "modelTurn" in content
        realtime = frame.get("realtimeInput") or frame.get("realtime_input")
        return isinstance(realtime, dict) and (
            "audio" in realtime or "mediaChunks" in realtime or "media_chunks" in realtime
        )

    # ---- sessions and handles ---------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        """A call or item id unique in this simulator: a session resumed from an older handle
        never reissues an id its previous connection already used, as with the real service."""
        self._id_counter += 1
        return f"{prefix}-{self._id_prefix}{self._id_counter:06d}"

    def key_problem(self, conn: SimConnection) -> str | None:
        """The close reason for a wrong key (``script.api_key`` set), else None."""
        expected = self.script.api_key
        if expected is None:
            return None
        headers = conn.request_headers
        presented = [
            conn.query.get("key"),
            conn.query.get("access_token"),
            headers.get("x-goog-api-key"),
        ]
        authorization = headers.get("authorization", "")
        if " " in authorization:
            presented.append(authorization.split(" ", 1)[1])
        if any(key and secrets.compare_digest(key, expected) for key in presented):
            return None
        return BAD_KEY

    def start_session(self, conn: SimConnection) -> _Session:
        session = _Session(id=secrets.token_hex(8), conn=conn)
        self._sessions[session.id] = session
        return session

    def issue_handle(self, snapshot: _Snapshot) -> str:
        """A new resumable handle restoring ``snapshot`` (its model state is copied now)."""
        handle = f"sim-handle-{secrets.token_urlsafe(12)}"
        session = snapshot.session
        self._handles[handle] = _Snapshot(
            session, _snapshot(snapshot.model, reset_turns=False), snapshot.lineage
        )
        session.handles.append(handle)
        while len(session.handles) > HANDLES_PER_SESSION:
            self._handles.pop(session.handles.popleft(), None)
        return handle

    def restore(
        self, handle: object, conn: SimConnection
    ) -> tuple[_Session, SimulatedModel, Lineage] | None:
        """The session, a fresh copy of its model state and the caller audio in its state for
        ``handle`` (None: unknown)."""
        if not isinstance(handle, str) or handle not in self._handles:
            return None
        snapshot = self._handles[handle]
        return snapshot.session, _snapshot(snapshot.model, reset_turns=True), snapshot.lineage

    def consumed_audio(self, session_id: str | None = None) -> bytes:
        """The caller audio in a session's current state (its latest connection's, open or
        closed): what a resume restored plus what that connection got, in order. The session
        is the only one when ``session_id`` is None. Empty with ``record=False``."""
        if session_id is None:
            if len(self._sessions) != 1:
                raise UsageError(
                    f"{len(self._sessions)} sessions: pass one of {sorted(self._sessions)}"
                )
            (session,) = self._sessions.values()
        else:
            session = self._sessions[session_id]
        handler = session.conn.session if session.conn is not None else None
        if not isinstance(handler, _GeminiSession):
            return b""
        return handler.consumed_audio

    # ---- test API -----------------------------------------------------------------------------

    async def go_away(self, time_left_s: float = 1.0) -> None:
        """Send ``goAway`` on every live connection now; each closes after ``time_left_s``."""
        for conn in self.live_connections:
            if isinstance(conn.session, _GeminiSession):
                await conn.session.go_away(time_left_s)


def _snapshot(model: SimulatedModel, *, reset_turns: bool) -> SimulatedModel:
    """A deep copy of ``model`` sharing the live script and the id factory; ``turns`` restarts
    for a new socket."""
    shared = (model.script, model.id_factory)  # the live script and the simulator's ids
    copied = copy.deepcopy(model, memo={id(item): item for item in shared})
    if reset_turns:
        copied.turns = 0
    return copied
