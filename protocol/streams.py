"""Pure encode/decode of the Redis stream entries, commands and the session record.

No network I/O: the ingress and the worker call these functions around their Redis commands.
The exact layout is documented in ``docs/streams.md``; the short field names keep a 20 ms audio
entry small (Redis stores field names per entry unless they repeat the previous entry's).

Every stream entry carries ``v`` (schema version) and ``ts`` (wall-clock microseconds when it was
produced: the ingress timestamp on input entries, the worker's receipt of the provider event on
output entries), so latency can be measured end to end.

Input stream (ingress -> worker), one total order of audio and commands::

    audio    v=1 ts=<us> k=a d=<raw audio bytes in the session's input format>
    command  v=1 ts=<us> k=c c=<command type> b=<JSON body>

Output stream (worker -> ingress), in provider order; ``ep`` is the writer's lease epoch::

    event    v=1 ts=<us> ep=<epoch> k=e e=audio d=<raw bytes> sr=<rate> [rid=<response id>]
    event    v=1 ts=<us> ep=<epoch> k=e e=<event name> b=<JSON payload>
    ack      v=1 ts=<us> ep=<epoch> k=k ref=<input entry id | "connect"> ok=1|0 b=<JSON>

A malformed entry raises :class:`protocol.errors.StreamEntryError` naming the field and reason.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from . import errors as _errors
from .config import AudioFormat, RealtimeSessionConfigUpdate, RealtimeToolResponse
from .errors import EntryTooLarge, StreamEntryError, VoicegridError
from .events import EVENT_MODELS, AudioEvent

__all__ = [
    "CLOSED_TTL_S",
    "CONNECT_REF",
    "IDLE_TTL_S",
    "INPUT_MAXLEN",
    "MAX_START_ATTEMPTS",
    "OUTPUT_MAXLEN",
    "SCHEMA_VERSION",
    "STREAM_ID_PART_MAX",
    "AckEntry",
    "AudioEntry",
    "Command",
    "CommandEntry",
    "DisconnectCommand",
    "DtmfCommand",
    "EntryLimits",
    "EventEntry",
    "Fields",
    "PingCommand",
    "PlaybackCommand",
    "RequestResponseCommand",
    "SessionRecord",
    "StateField",
    "ToolResponseCommand",
    "UpdateConfigCommand",
    "decode_command",
    "decode_input",
    "decode_output",
    "decode_record",
    "encode_ack",
    "encode_audio",
    "encode_command",
    "encode_event",
    "encode_record",
    "entry_id_key",
    "error_from_body",
    "error_to_body",
    "now_us",
]

#: Version written in every entry's ``v`` field; readers reject other versions.
SCHEMA_VERSION = 1
#: ``XADD ... MAXLEN ~`` bound of an input stream: about 10 s of 20 ms caller frames, several
#: times what a takeover has to re-read (see docs/streams.md for the memory this costs).
INPUT_MAXLEN = 500
#: ``XADD ... MAXLEN ~`` bound of an output stream: about 10 s of 20 ms model audio events.
OUTPUT_MAXLEN = 500
#: A session's keys expire this long after it ends (late ``attach`` can still read the tail).
CLOSED_TTL_S = 300
#: An open session's keys expire after this long without an owner refreshing them.
IDLE_TTL_S = 3600
#: ``ref`` of the acknowledgement that answers session creation (connect to the provider).
CONNECT_REF = "connect"
#: Lease epochs a session may take without ever going live (a record no worker can start, a
#: worker that dies on it) before the reaper closes it with an error instead of a new epoch.
MAX_START_ATTEMPTS = 3

#: Largest value of either part of a stream entry id (Redis keeps each as an unsigned 64-bit int).
STREAM_ID_PART_MAX = 2**64 - 1

_VERSION = str(SCHEMA_VERSION).encode()

#: A stream entry as written: field name -> value.
Fields = dict[str, bytes | str | int]


def now_us() -> int:
    """Wall-clock time in integer microseconds (the ``ts`` of entries)."""
    return time.time_ns() // 1000


def entry_id_key(entry_id: bytes | str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a sortable tuple; raises ``StreamEntryError`` on any other form.

    Exactly what Redis accepts as a full stream id: two whole numbers of ASCII digits, each at
    most ``2**64 - 1``. ``str.isdigit`` alone lets Arabic-Indic or superscript digits through and
    20 digits can exceed 64 bits: Redis rejects both, which would fail a whole multiplexed read.
    """
    text = entry_id.decode("latin-1") if isinstance(entry_id, bytes) else entry_id
    # partition + isascii/isdigit accept exactly what the regex ``([0-9]{1,20})-([0-9]{1,20})``
    # does, at a third of its cost: this runs once per entry read, in the worker and the ingress
    ms, _, seq = text.partition("-")
    if (
        0 < len(ms) <= 20
        and 0 < len(seq) <= 20
        and ms.isascii()
        and seq.isascii()
        and ms.isdigit()
        and seq.isdigit()
    ):
        key = int(ms), int(seq)
        if key[0] <= STREAM_ID_PART_MAX and key[1] <= STREAM_ID_PART_MAX:
            return key
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise StreamEntryError(
        f"stream entry id {shown!r} is invalid; expected '<ms>-<seq>': two whole numbers in ASCII "
        f"digits, each at most {STREAM_ID_PART_MAX}"
    )


# --- size limits -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class EntryLimits:
    """How large one input entry may be; checked by the ingress before it writes (raising
    ``EntryTooLarge``) and by the worker before it forwards (an ``error`` event, the entry
    dropped, the session goes on). The defaults keep every provider event far below OpenAI's
    documented 15 MiB per client event; ``VOICEGRID_MAX_*`` (docs/operations.md) change them.
    """

    #: audio per entry, in milliseconds of the session's input format
    audio_ms: int = 1000
    #: the JSON body (``b``) of one command: a config update, tool results, an instruction
    command_bytes: int = 1024 * 1024
    #: the JSON of one tool result's ``output``
    tool_output_bytes: int = 256 * 1024

    def audio_bytes(self, fmt: AudioFormat) -> int:
        """The largest audio entry in ``fmt``, in bytes (whole samples)."""
        nbytes = fmt.bytes_per_second * self.audio_ms // 1000
        return nbytes - nbytes % fmt.bytes_per_sample

    def check_audio(self, nbytes: int, fmt: AudioFormat) -> None:
        """``EntryTooLarge`` if ``nbytes`` of audio in ``fmt`` are over the limit."""
        limit = self.audio_bytes(fmt)
        if nbytes > limit:
            raise EntryTooLarge(
                f"audio frame of {nbytes} bytes ({fmt.duration_ms(nbytes):.0f} ms) is over the "
                f"limit of {limit} bytes ({self.audio_ms / 1000:g} s of {fmt.encoding} at "
                f"{fmt.sample_rate} Hz), set by VOICEGRID_MAX_AUDIO_ENTRY_MS; send frames of "
                "10-100 ms"
            )

    def check_command(self, kind: str, nbytes: int) -> None:
        """``EntryTooLarge`` if a ``kind`` command body of ``nbytes`` is over the limit."""
        if nbytes > self.command_bytes:
            raise EntryTooLarge(
                f"{kind} command of {nbytes} bytes of JSON is over the limit of "
                f"{self.command_bytes} bytes (VOICEGRID_MAX_COMMAND_BYTES)"
            )

    def check_tool_output(self, response: RealtimeToolResponse) -> None:
        """``EntryTooLarge`` if the JSON of ``response.output`` is over the limit."""
        nbytes = len(orjson.dumps(response.output))
        if nbytes > self.tool_output_bytes:
            raise EntryTooLarge(
                f"tool output for call {response.call_id[:64]!r} of {nbytes} bytes of JSON is "
                f"over the limit of {self.tool_output_bytes} bytes "
                "(VOICEGRID_MAX_TOOL_OUTPUT_BYTES)"
            )


# --- commands --------------------------------------------------------------------------------


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolResponseCommand(_Command):
    """Return tool results to the model (``send_tool_response``)."""

    type: Literal["tool_response"] = "tool_response"
    responses: list[RealtimeToolResponse] = Field(min_length=1)


class UpdateConfigCommand(_Command):
    """Change the session config (``update_config``); acknowledged with the strategy used."""

    type: Literal["update_config"] = "update_config"
    update: RealtimeSessionConfigUpdate


class RequestResponseCommand(_Command):
    """Ask the model to respond now (``request_response``)."""

    type: Literal["request_response"] = "request_response"
    instruction: str | None = None


class DisconnectCommand(_Command):
    """End the session (``disconnect``); acknowledged once the provider connection is closed."""

    type: Literal["disconnect"] = "disconnect"


class PingCommand(_Command):
    """Check the live provider connection (``ping``); acknowledged with ``{"alive": bool}``."""

    type: Literal["ping"] = "ping"


class DtmfCommand(_Command):
    """The caller pressed a keypad key: the worker publishes a ``dtmf`` event (not acknowledged).

    A media leg (``ingress.media``) sends it, so the backend's own attached client sees the key
    on the output stream in order with the other events."""

    type: Literal["dtmf"] = "dtmf"
    digit: str = Field(pattern=r"^[0-9*#A-D]$")


class PlaybackCommand(_Command):
    """The caller's player has played ``played_ms`` of response ``response_id`` (not
    acknowledged). A provider client that truncates on barge-in uses the latest report instead of
    its wall-clock estimate (``RealtimeAudioClient.report_playback``)."""

    type: Literal["playback"] = "playback"
    response_id: str | None = Field(default=None, max_length=256)
    played_ms: int = Field(ge=0, le=24 * 3600 * 1000)


Command = Annotated[
    ToolResponseCommand
    | UpdateConfigCommand
    | RequestResponseCommand
    | DisconnectCommand
    | PingCommand
    | DtmfCommand
    | PlaybackCommand,
    Field(discriminator="type"),
]
_COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
_COMMAND_TYPES = (
    "tool_response",
    "update_config",
    "request_response",
    "disconnect",
    "ping",
    "dtmf",
    "playback",
)


@dataclasses.dataclass(frozen=True, slots=True)
class AudioEntry:
    """A caller audio frame from the input stream."""

    data: bytes
    ts_us: int


@dataclasses.dataclass(frozen=True, slots=True)
class CommandEntry:
    """A command from the input stream."""

    command: Command
    ts_us: int


@dataclasses.dataclass(frozen=True, slots=True)
class EventEntry:
    """An event from the output stream, with its payload model."""

    name: str
    payload: BaseModel
    ts_us: int
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class AckEntry:
    """The answer to a command (``ref`` = its input entry id) or to session creation."""

    ref: str
    ok: bool
    result: dict[str, Any]
    error: VoicegridError | None
    ts_us: int
    epoch: int


# --- field access ----------------------------------------------------------------------------


def _get(fields: Mapping[Any, Any], name: str, *, required: bool = True) -> bytes | None:
    value = fields.get(name.encode())
    if value is None:
        value = fields.get(name)
    if value is None:
        if required:
            raise StreamEntryError(f"field {name!r} is missing")
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, int):
        return str(value).encode()
    raise StreamEntryError(f"field {name!r} has type {type(value).__name__}; expected bytes")


def _int_field(fields: Mapping[Any, Any], name: str) -> int:
    raw = _get(fields, name)
    assert raw is not None
    try:
        value = int(raw)
    except ValueError:
        raise StreamEntryError(f"field {name!r} is {raw[:40]!r}; expected an integer") from None
    if value < 0:
        raise StreamEntryError(f"field {name!r} is {value}; expected a non-negative integer")
    return value


def _text(fields: Mapping[Any, Any], name: str, *, required: bool = True) -> str | None:
    raw = _get(fields, name, required=required)
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise StreamEntryError(f"field {name!r} is not valid UTF-8") from None


def _json(fields: Mapping[Any, Any], name: str) -> dict[str, Any]:
    raw = _get(fields, name)
    assert raw is not None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StreamEntryError(f"field {name!r} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StreamEntryError(
            f"field {name!r} is a JSON {type(value).__name__}; expected a JSON object"
        )
    return value


def _check_version(fields: Mapping[Any, Any]) -> int:
    raw = _get(fields, "v")
    if raw != _VERSION:
        raise StreamEntryError(
            f"field 'v' is {(raw or b'')[:20]!r}; this reader understands schema version "
            f"{SCHEMA_VERSION}"
        )
    return _int_field(fields, "ts")


def _validation_reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in exc.errors()[:3]
    )


# --- input stream ----------------------------------------------------------------------------


def encode_audio(frame: bytes, *, ts_us: int | None = None) -> Fields:
    """An input-stream entry carrying one caller audio frame as raw bytes."""
    return {"v": _VERSION, "ts": now_us() if ts_us is None else ts_us, "k": b"a", "d": frame}


def encode_command(command: Command, *, ts_us: int | None = None) -> Fields:
    """An input-stream entry carrying ``command``."""
    body = command.model_dump(mode="json", exclude={"type"}, exclude_unset=False)
    if isinstance(command, UpdateConfigCommand):
        # only the fields the caller set are changes; defaults must not overwrite the config
        body["update"] = command.update.model_dump(mode="json", exclude_unset=True)
    return {
        "v": _VERSION,
        "ts": now_us() if ts_us is None else ts_us,
        "k": b"c",
        "c": command.type,
        "b": orjson.dumps(body),
    }


def decode_command(kind: str, body: dict[str, Any]) -> Command:
    """Validate a command of type ``kind`` with JSON ``body``; ``StreamEntryError`` if invalid."""
    if kind not in _COMMAND_TYPES:
        raise StreamEntryError(f"field 'c' is {kind!r}; expected one of {list(_COMMAND_TYPES)}")
    try:
        return _COMMAND_ADAPTER.validate_python({**body, "type": kind})
    except ValidationError as exc:
        raise StreamEntryError(
            f"field 'b' is not a valid {kind} command: {_validation_reason(exc)}"
        ) from None


def decode_input(fields: Mapping[Any, Any]) -> AudioEntry | CommandEntry:
    """Decode an input-stream entry; raise ``StreamEntryError`` naming the bad field."""
    # fast path for the common case, a well-formed audio entry as redis-py returns it (bytes
    # names and values): it accepts a subset of what the checks below accept, with the same
    # result; anything else takes the full path and its error messages
    if fields.get(b"k") == b"a" and fields.get(b"v") == _VERSION:
        ts = fields.get(b"ts")
        data = fields.get(b"d")
        if type(ts) is bytes and type(data) is bytes and ts.isdigit():
            return AudioEntry(data=data, ts_us=int(ts))
    ts_us = _check_version(fields)
    kind = _get(fields, "k")
    if kind == b"a":
        data = _get(fields, "d")
        assert data is not None
        return AudioEntry(data=data, ts_us=ts_us)
    if kind == b"c":
        name = _text(fields, "c")
        assert name is not None
        return CommandEntry(command=decode_command(name, _json(fields, "b")), ts_us=ts_us)
    raise StreamEntryError(f"field 'k' is {kind!r}; expected b'a' (audio) or b'c' (command)")


# --- output stream ---------------------------------------------------------------------------


def encode_event(name: str, payload: BaseModel, *, epoch: int, ts_us: int | None = None) -> Fields:
    """An output-stream entry for the event ``name``; audio travels as raw bytes."""
    expected = EVENT_MODELS.get(name)
    if expected is None or not isinstance(payload, expected):
        raise StreamEntryError(
            f"event {name!r} with a {type(payload).__name__} payload cannot be encoded; expected "
            f"one of {sorted(EVENT_MODELS)} with its payload model"
        )
    fields: Fields = {
        "v": _VERSION,
        "ts": now_us() if ts_us is None else ts_us,
        "ep": epoch,
        "k": b"e",
        "e": name,
    }
    if isinstance(payload, AudioEvent):
        fields["d"] = payload.data
        fields["sr"] = payload.sample_rate
        if payload.response_id is not None:
            fields["rid"] = payload.response_id
    else:
        fields["b"] = orjson.dumps(payload.model_dump(mode="json"))
    return fields


def encode_ack(
    ref: str,
    *,
    epoch: int,
    result: dict[str, Any] | None = None,
    error: BaseException | None = None,
    ts_us: int | None = None,
) -> Fields:
    """An acknowledgement of the command at entry ``ref`` (or of session creation)."""
    body = error_to_body(error) if error is not None else (result or {})
    return {
        "v": _VERSION,
        "ts": now_us() if ts_us is None else ts_us,
        "ep": epoch,
        "k": b"k",
        "ref": ref,
        "ok": b"0" if error is not None else b"1",
        "b": orjson.dumps(body),
    }


def decode_output(fields: Mapping[Any, Any]) -> EventEntry | AckEntry:
    """Decode an output-stream entry; raise ``StreamEntryError`` naming the bad field."""
    # fast path for the common case, a well-formed audio event as redis-py returns it (as in
    # decode_input: a subset of what the checks below accept, with the same result)
    if fields.get(b"e") == b"audio" and fields.get(b"k") == b"e" and fields.get(b"v") == _VERSION:
        ts, ep, data = fields.get(b"ts"), fields.get(b"ep"), fields.get(b"d")
        rate, rid = fields.get(b"sr"), fields.get(b"rid")
        if (
            type(ts) is bytes
            and type(ep) is bytes
            and type(rate) is bytes
            and type(data) is bytes
            and ts.isdigit()
            and ep.isdigit()
            and rate.isdigit()
            and (rid is None or (type(rid) is bytes and rid.isascii()))
        ):
            try:
                audio = AudioEvent(
                    data=data,
                    sample_rate=int(rate),
                    response_id=None if rid is None else rid.decode(),
                )
            except ValidationError:
                pass  # reported by the full checks below
            else:
                return EventEntry(name="audio", payload=audio, ts_us=int(ts), epoch=int(ep))
    ts_us = _check_version(fields)
    epoch = _int_field(fields, "ep")
    kind = _get(fields, "k")
    if kind == b"e":
        name = _text(fields, "e")
        assert name is not None
        model = EVENT_MODELS.get(name)
        if model is None:
            raise StreamEntryError(f"field 'e' is {name!r}; expected one of {sorted(EVENT_MODELS)}")
        payload: BaseModel
        try:
            if model is AudioEvent:
                data = _get(fields, "d")
                payload = AudioEvent(
                    data=data or b"",
                    sample_rate=_int_field(fields, "sr"),
                    response_id=_text(fields, "rid", required=False),
                )
            else:
                payload = model.model_validate(_json(fields, "b"))
        except ValidationError as exc:
            raise StreamEntryError(
                f"field 'b' is not a valid {name} payload: {_validation_reason(exc)}"
            ) from None
        return EventEntry(name=name, payload=payload, ts_us=ts_us, epoch=epoch)
    if kind == b"k":
        ref = _text(fields, "ref")
        assert ref is not None
        ok_raw = _get(fields, "ok")
        if ok_raw not in (b"0", b"1"):
            raise StreamEntryError(f"field 'ok' is {ok_raw!r}; expected b'0' or b'1'")
        body = _json(fields, "b")
        ok = ok_raw == b"1"
        return AckEntry(
            ref=ref,
            ok=ok,
            result=body if ok else {},
            error=None if ok else error_from_body(body),
            ts_us=ts_us,
            epoch=epoch,
        )
    raise StreamEntryError(f"field 'k' is {kind!r}; expected b'e' (event) or b'k' (ack)")


# --- errors across processes -----------------------------------------------------------------


def error_to_body(exc: BaseException) -> dict[str, Any]:
    """A JSON body that :func:`error_from_body` turns back into the same error class."""
    body: dict[str, Any] = {
        "type": type(exc).__name__ if isinstance(exc, VoicegridError) else "RuntimeFailure",
        "message": getattr(exc, "message", None) or str(exc) or type(exc).__name__,
    }
    if isinstance(exc, _errors.ProviderError):
        body["code"] = exc.code
        body["recoverable"] = exc.recoverable
    return body


def error_from_body(body: Mapping[str, Any]) -> VoicegridError:
    """Rebuild an error sent by :func:`error_to_body` (unknown types become ``RuntimeFailure``)."""
    name = body.get("type")
    message = str(body.get("message") or "unknown error")
    cls = (
        getattr(_errors, name, None) if isinstance(name, str) and name in _errors.__all__ else None
    )
    if not (isinstance(cls, type) and issubclass(cls, VoicegridError)):
        return _errors.RuntimeFailure(message)
    if issubclass(cls, _errors.ProviderError):
        code = body.get("code")
        recoverable = body.get("recoverable")
        return cls(
            message,
            code=str(code) if code is not None else "provider_error",
            recoverable=bool(recoverable),
        )
    return cls(message)


# --- the session record ----------------------------------------------------------------------


class StateField:
    """Field names of the session record hash (``<ns>:{<sid>}:state``)."""

    VERSION = "v"
    PROVIDER = "provider"
    MODEL = "model"
    CONFIG = "config"
    OPTIONS = "options"
    STATUS = "status"
    EPOCH = "epoch"
    OWNER = "owner"
    CURSOR = "cursor"
    COMMAND_CURSOR = "cmd_cursor"
    PROVIDER_STATE = "pstate"
    CONVERSATION = "conv"
    HANDOFF = "handoff"
    CREATED = "created"
    CAPABILITIES = "caps"
    OPEN_RESPONSE = "open_resp"
    REQUEST = "req"
    STARTS = "starts"


Status = Literal["pending", "live", "closed"]


class SessionRecord(BaseModel):
    """The state record of a session: everything a new owner needs to continue it.

    ``cursor`` is the input entry id up to which every entry reached the provider (a new owner
    reads after it); ``command_cursor`` the last command applied (commands at or before it are
    never applied twice); ``provider_state`` what the provider client exported (e.g. a Gemini
    resumption handle); ``conversation`` the summary used for replay; ``handoff`` the epoch that
    handed the session over on drain (0: none); ``capabilities`` the provider client's;
    ``open_response`` the id of a model turn whose output was published but whose
    ``response-done`` was not ("": none), which a new owner closes as ``failed``;
    ``request`` the entry id of the create request that made the session ("": none), which the
    ``connect`` acknowledgement answers (its ``ref``); ``starts`` the lease epochs taken since
    the session was last live (the lease script counts them, going live resets them): the reaper
    closes a session that never gets going after ``MAX_START_ATTEMPTS`` instead of re-enqueueing
    it forever.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str
    config: dict[str, Any]
    options: dict[str, Any] = Field(default_factory=dict)
    status: Status = "pending"
    epoch: int = Field(default=0, ge=0)
    owner: str = ""
    cursor: str = "0-0"
    command_cursor: str = "0-0"
    provider_state: dict[str, Any] = Field(default_factory=dict)
    conversation: list[dict[str, Any]] = Field(default_factory=list)
    handoff: int = Field(default=0, ge=0)
    created_us: int = 0
    capabilities: dict[str, Any] = Field(default_factory=dict)
    open_response: str = ""
    request: str = ""
    starts: int = Field(default=0, ge=0)

    @field_validator("cursor", "command_cursor")
    @classmethod
    def _stream_position(cls, value: str) -> str:
        # a new owner passes these to XREAD: one Redis rejects would fail the worker's shared read
        entry_id_key(value)
        return value


_JSON_FIELDS = {
    StateField.CONFIG: "config",
    StateField.OPTIONS: "options",
    StateField.PROVIDER_STATE: "provider_state",
    StateField.CONVERSATION: "conversation",
    StateField.CAPABILITIES: "capabilities",
}
_PLAIN_FIELDS = {
    StateField.PROVIDER: "provider",
    StateField.MODEL: "model",
    StateField.STATUS: "status",
    StateField.EPOCH: "epoch",
    StateField.OWNER: "owner",
    StateField.CURSOR: "cursor",
    StateField.COMMAND_CURSOR: "command_cursor",
    StateField.HANDOFF: "handoff",
    StateField.CREATED: "created_us",
    StateField.OPEN_RESPONSE: "open_response",
    StateField.REQUEST: "request",
    StateField.STARTS: "starts",
}


def encode_record(record: SessionRecord) -> dict[str, bytes]:
    """The record as hash fields (JSON for structured fields, text for the rest)."""
    out: dict[str, bytes] = {StateField.VERSION: _VERSION}
    for field, attr in _JSON_FIELDS.items():
        out[field] = orjson.dumps(getattr(record, attr))
    for field, attr in _PLAIN_FIELDS.items():
        out[field] = str(getattr(record, attr)).encode()
    return out


def decode_record(fields: Mapping[Any, Any]) -> SessionRecord:
    """Decode a state hash; raise ``StreamEntryError`` naming the bad field.

    An absent or empty optional field takes its default (a record is never rejected for a
    field it could do without)."""
    raw = _get(fields, StateField.VERSION)
    if raw != _VERSION:
        raise StreamEntryError(
            f"session record field 'v' is {raw!r}; expected schema version {SCHEMA_VERSION}"
        )
    values: dict[str, Any] = {}
    for field, attr in _JSON_FIELDS.items():
        value = _get(fields, field, required=False)
        if value is not None and value.strip():
            try:
                values[attr] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise StreamEntryError(
                    f"session record field {field!r} is not JSON: {exc}"
                ) from None
    for field, attr in _PLAIN_FIELDS.items():
        text = _text(fields, field, required=False)
        if text is not None and text != "":
            values[attr] = text
    try:
        return SessionRecord.model_validate(values)
    except ValidationError as exc:
        raise StreamEntryError(f"session record is invalid: {_validation_reason(exc)}") from None
