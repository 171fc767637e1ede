"""Session create requests: how any Redis client starts a session (``docs/streams.md``).

A producer adds one entry to the deployment's create stream and reads the answer on the
session's output stream; it never writes the session record or an arq job::

    XADD <ns>:create MAXLEN ~ 10000 * v 1 sid <session id> provider <name> model <model id>
         config <JSON RealtimeSessionConfig> [options <JSON object>]

One worker (consumer group :data:`CREATE_GROUP`) validates the request, writes the session
record and enqueues the session's job. The answer is the acknowledgement ``ref=<request entry
id>`` on ``<ns>:{<sid>}:out``: ``ok=1`` once the provider is connected, or ``ok=0`` between an
``error`` and a ``closed`` event when the request or the provider connection failed. A request
whose session id is invalid or already in use has no output stream of its own: it is answered
on ``<ns>:create:rejected`` instead (:func:`encode_rejection`).

This module is pure: the field layout, the validation (every problem names the field, the value
and the expected form) and the error codes. ``ingress.RedisRealtimeClient`` writes its requests
with :func:`encode_create_request`; the worker reads them with :func:`decode_create_request`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from .config import RealtimeSessionConfig, parse_config
from .errors import ConfigError, InvalidSessionId, VoicegridError
from .events import ConnectionEvent, ErrorEvent
from .keys import _shown as _shown_value
from .keys import validate_session_id
from .streams import SCHEMA_VERSION, Fields, encode_ack, encode_event, now_us

__all__ = [
    "CREATE_FIELDS",
    "CREATE_GROUP",
    "CREATE_MAXLEN",
    "CREATE_MAX_AGE_S",
    "CREATE_MAX_BYTES",
    "REJECTED_MAXLEN",
    "WORKER_ONLY_OPTIONS",
    "CreateRequest",
    "RequestRejected",
    "check_options",
    "decode_create_request",
    "encode_create_request",
    "encode_rejection",
    "rejection_entries",
]

#: The consumer group of every worker on ``<ns>:create``: each request is handled once.
CREATE_GROUP = "workers"
#: ``XADD <ns>:create MAXLEN ~`` bound (producers trim; workers delete what they handled).
CREATE_MAXLEN = 10_000
#: ``XADD <ns>:create:rejected MAXLEN ~`` bound.
REJECTED_MAXLEN = 1_000
#: A request that no worker took within this many seconds (by its entry id's time) is answered
#: ``request_expired`` instead of starting a session nobody waits for any more.
CREATE_MAX_AGE_S = 60.0
#: Upper bound of the ``config`` plus ``options`` JSON of one request.
CREATE_MAX_BYTES = 256 * 1024
#: Options that stay on the worker: credentials and endpoints are the worker's configuration.
WORKER_ONLY_OPTIONS = frozenset({"api_key", "url"})
#: Fields a request may carry (``ts`` is optional, as on every other entry).
CREATE_FIELDS = ("v", "ts", "sid", "provider", "model", "config", "options")
_REQUIRED = ("v", "sid", "provider", "model")
_MAX_NAME = 256


@dataclasses.dataclass(frozen=True, slots=True)
class CreateRequest:
    """A valid create request."""

    session_id: str
    provider: str
    model: str
    config: RealtimeSessionConfig
    options: dict[str, Any]


class RequestRejected(Exception):
    """A create request that cannot start a session.

    ``code`` is the ``error`` event's code (``invalid_request``, ``invalid_config``,
    ``invalid_session_id``, ``session_exists``, ``request_expired``, ``unsupported_version``;
    the worker adds ``malformed_record`` and ``internal_error``),
    ``error`` the exception the ``connect`` acknowledgement carries (its class travels as the
    body's ``type``), ``session_id`` the request's session id when it is a valid one.
    """

    def __init__(self, code: str, error: VoicegridError, session_id: str | None = None) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error
        self.session_id = session_id


def _shown(raw: bytes | str) -> str:
    """A value for an error message: text, quoted, at most 80 characters."""
    return _shown_value(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse credentials and endpoints in provider options (``ConfigError`` naming them)."""
    bad = sorted(WORKER_ONLY_OPTIONS & set(options))
    if bad:
        raise ConfigError(
            f"options {bad} cannot be sent through Redis; credentials and endpoints are the "
            "worker's configuration (OPENAI_API_KEY, VOICEGRID_OPENAI_URL, ...)"
        )


def encode_create_request(
    *,
    session_id: str,
    provider: str,
    model: str,
    config: RealtimeSessionConfig,
    options: Mapping[str, Any] | None = None,
    ts_us: int | None = None,
) -> Fields:
    """The fields of ``XADD <ns>:create`` for a new session (validated as a worker would)."""
    check_options(options or {})
    fields: Fields = {
        "v": str(SCHEMA_VERSION).encode(),
        "ts": now_us() if ts_us is None else ts_us,
        "sid": validate_session_id(session_id),
        "provider": provider,
        "model": model,
        "config": orjson.dumps(config.model_dump(mode="json")),
    }
    if options:
        fields["options"] = orjson.dumps(dict(options))
    return fields


def _field(fields: Mapping[Any, Any], name: str) -> bytes | None:
    value = fields.get(name.encode(), fields.get(name))
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _text(raw: bytes, name: str, sid: str | None) -> str:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RequestRejected(
            "invalid_request", ConfigError(f"field {name!r} is not valid UTF-8"), sid
        ) from None
    if not text or len(text) > _MAX_NAME or not text.isprintable():
        raise RequestRejected(
            "invalid_request",
            ConfigError(
                f"field {name!r} is {_shown(text)}; expected 1-{_MAX_NAME} printable characters"
            ),
            sid,
        )
    return text


def _json_object(raw: bytes, name: str, sid: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected(
            "invalid_config" if name == "config" else "invalid_request",
            ConfigError(f"field {name!r} is not JSON ({exc}); expected a JSON object"),
            sid,
        ) from None
    if not isinstance(value, dict):
        raise RequestRejected(
            "invalid_config" if name == "config" else "invalid_request",
            ConfigError(
                f"field {name!r} is a JSON {type(value).__name__}: {_shown(raw)}; expected a "
                "JSON object"
            ),
            sid,
        )
    return value


def decode_create_request(fields: Mapping[Any, Any]) -> CreateRequest:
    """Validate the fields of one ``<ns>:create`` entry; raise :class:`RequestRejected`."""
    raw_sid = _field(fields, "sid")
    sid: str | None = None
    if raw_sid is not None:
        try:
            sid = validate_session_id(raw_sid.decode(errors="replace"))
        except InvalidSessionId as exc:
            raise RequestRejected("invalid_session_id", exc) from None
    names = {k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in fields}
    unknown = sorted(names - set(CREATE_FIELDS))
    if unknown:
        raise RequestRejected(
            "invalid_request",
            ConfigError(f"unknown fields {unknown}; a create request has {list(CREATE_FIELDS)}"),
            sid,
        )
    missing = [name for name in _REQUIRED if _field(fields, name) is None]
    if missing:
        error: VoicegridError = ConfigError(
            f"missing fields {missing}; a create request needs {list(_REQUIRED)} (config and "
            "options are optional)"
        )
        if sid is None:
            error = InvalidSessionId(f"{error}; expected 'sid': 1-64 characters of [A-Za-z0-9_.-]")
        raise RequestRejected(
            "invalid_session_id" if sid is None else "invalid_request", error, sid
        )
    assert sid is not None
    version = _field(fields, "v")
    if version != str(SCHEMA_VERSION).encode():
        raise RequestRejected(
            "unsupported_version",
            ConfigError(
                f"field 'v' is {_shown(version or b'')}; this worker understands version "
                f"{SCHEMA_VERSION}"
            ),
            sid,
        )
    ts = _field(fields, "ts")
    if ts is not None and not ts.isdigit():
        raise RequestRejected(
            "invalid_request",
            ConfigError(f"field 'ts' is {_shown(ts)}; expected integer microseconds"),
            sid,
        )
    provider = _text(_field(fields, "provider") or b"", "provider", sid)
    model = _text(_field(fields, "model") or b"", "model", sid)
    raw_config = _field(fields, "config") or b"{}"
    raw_options = _field(fields, "options") or b"{}"
    if len(raw_config) + len(raw_options) > CREATE_MAX_BYTES:
        raise RequestRejected(
            "invalid_request",
            ConfigError(
                f"fields 'config' and 'options' are {len(raw_config) + len(raw_options)} bytes; "
                f"expected at most {CREATE_MAX_BYTES}"
            ),
            sid,
        )
    options = _json_object(raw_options, "options", sid)
    try:
        check_options(options)
    except ConfigError as exc:
        raise RequestRejected("invalid_request", exc, sid) from None
    try:
        config = parse_config(_json_object(raw_config, "config", sid))
    except ConfigError as exc:
        raise RequestRejected("invalid_config", exc, sid) from None
    return CreateRequest(
        session_id=sid, provider=provider, model=model, config=config, options=options
    )


def encode_rejection(
    request_id: str, raw_sid: bytes | str | None, rejected: RequestRejected
) -> Fields:
    """The ``<ns>:create:rejected`` entry answering ``request_id``."""
    sid = raw_sid.decode(errors="replace") if isinstance(raw_sid, bytes) else (raw_sid or "")
    error = rejected.error
    return {
        "v": str(SCHEMA_VERSION).encode(),
        "ts": now_us(),
        "req": request_id,
        "sid": sid[:128],
        "code": rejected.code,
        "type": type(error).__name__,
        "message": str(error),
    }


def rejection_entries(
    ref: str | None, rejected: RequestRejected, *, epoch: int = 0, closed_reason: str = "rejected"
) -> list[Fields]:
    """The output entries that end a session that cannot run: an ``error`` event, the failed
    acknowledgement ``ref`` (none when ``ref`` is ``None``) and a ``closed`` event (its reason
    ``closed_reason``)."""
    entries: list[Fields] = [
        encode_event(
            "error",
            ErrorEvent(code=rejected.code, message=str(rejected.error), recoverable=False),
            epoch=epoch,
        )
    ]
    if ref is not None:
        entries.append(encode_ack(ref, epoch=epoch, error=rejected.error))
    entries.append(encode_event("closed", ConnectionEvent(reason=closed_reason), epoch=epoch))
    return entries
