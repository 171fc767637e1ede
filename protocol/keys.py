"""Every Redis key voicegrid uses, in one place (``docs/streams.md``).

A deployment's keys start with a namespace (``VOICEGRID_NAMESPACE``, default ``voicegrid``) so
several deployments and test runs can share one Redis. A session's keys all carry the Redis
Cluster hash tag ``{<session_id>}``, so they live in one slot and every multi-key operation on a
session (the fenced-write and lease scripts) is legal on a cluster::

    <ns>:{<sid>}:in       stream  caller audio and commands, in the order the ingress sent them
    <ns>:{<sid>}:out      stream  events and acknowledgements, in provider order
    <ns>:{<sid>}:state    hash    the session record (config, owner, epoch, cursor, ...)
    <ns>:{<sid>}:lease    string  "<epoch>:<worker id>" with a PX time to live (the owner's lease)
    <ns>:{<sid>}:mt:<id>  string  a media token that was used (SET NX, expires with the token)

Keys that span sessions (not cluster-slotted; arq needs a single-node Redis anyway)::

    <ns>:queue            zset    the arq queue of session jobs
    <ns>:live             zset    open sessions -> lease deadline (ms); the reaper scans it
    <ns>:create           stream  session create requests, any Redis client (protocol/create.py)
    <ns>:create:rejected  stream  answers to create requests that have no session of their own
    <ns>:wake:<reader>    stream  wakes one process's blocking multiplexed XREAD
    <ns>:{ph:<target>}        hash    a provider target's circuit breaker (redisio/health.py)
    <ns>:{ph:<target>}:probe  string  the half-open probe token (SET NX PX)

Session ids are validated by :func:`validate_session_id` before they become part of a key.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import ConfigError, InvalidSessionId

__all__ = [
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "SESSION_ID_PATTERN",
    "Keys",
    "SessionKeys",
    "validate_namespace",
    "validate_session_id",
]

#: Key prefix when ``VOICEGRID_NAMESPACE`` is not set.
DEFAULT_NAMESPACE = "voicegrid"

#: 1-64 characters: ASCII letters, digits, ``_``, ``-`` and ``.`` (no ``{``, ``}``, ``:``, space).
SESSION_ID_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
#: 1-48 characters: ASCII letters, digits, ``_``, ``-`` and ``.``.
NAMESPACE_PATTERN = r"[A-Za-z0-9_.\-]{1,48}"

_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_session_id(value: object) -> str:
    """Return ``value`` if it is a safe session id; raise ``InvalidSessionId`` otherwise."""
    if not isinstance(value, str):
        raise InvalidSessionId(
            f"session id must be a string, got {type(value).__name__} {_shown(value)}; expected "
            f"1-64 characters matching {SESSION_ID_PATTERN}"
        )
    if not _SESSION_ID.fullmatch(value):
        raise InvalidSessionId(
            f"session id {_shown(value)} is invalid; expected 1-64 characters of ASCII letters, "
            "digits, '_', '-' or '.'"
        )
    return value


def validate_namespace(value: object) -> str:
    """Return ``value`` if it is a valid key namespace; raise ``ConfigError`` otherwise."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        raise ConfigError(
            f"namespace {_shown(value)} is invalid; expected 1-48 characters of ASCII letters, "
            "digits, '_', '-' or '.'"
        )
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class SessionKeys:
    """The keys of one session; all share the hash tag ``{<session_id>}``."""

    session_id: str
    input: str
    output: str
    state: str
    lease: str

    @property
    def hash_tag(self) -> str:
        return "{" + self.session_id + "}"

    @property
    def all(self) -> tuple[str, ...]:
        """Every key of the session (for expiry and clean-up)."""
        return (self.input, self.output, self.state, self.lease)

    def media_token(self, token_id: str) -> str:
        """Marks media token ``token_id`` of this session as used (``ingress.media_tokens``)."""
        if not (0 < len(token_id) <= 64 and token_id.isascii() and token_id.isalnum()):
            raise ValueError(f"media token id {_shown(token_id)} is not 1-64 ASCII letters/digits")
        return f"{self.input.removesuffix(':in')}:mt:{token_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """Key layout of one deployment (one namespace)."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    def session(self, session_id: str) -> SessionKeys:
        """The keys of ``session_id`` (validated first)."""
        sid = validate_session_id(session_id)
        base = f"{self.namespace}:{{{sid}}}:"
        return SessionKeys(
            session_id=sid,
            input=base + "in",
            output=base + "out",
            state=base + "state",
            lease=base + "lease",
        )

    @property
    def queue(self) -> str:
        """The arq queue (a sorted set) the session jobs are enqueued on."""
        return f"{self.namespace}:queue"

    @property
    def live(self) -> str:
        """Sorted set: open session id -> lease deadline in epoch milliseconds."""
        return f"{self.namespace}:live"

    @property
    def create(self) -> str:
        """Stream of session create requests (consumed by the workers' consumer group)."""
        return f"{self.namespace}:create"

    @property
    def create_rejected(self) -> str:
        """Stream answering create requests whose session id is invalid or already in use."""
        return f"{self.namespace}:create:rejected"

    def wake(self, reader_id: str) -> str:
        """The wake-up stream of one process's multiplexed reader."""
        return f"{self.namespace}:wake:{validate_session_id(reader_id)}"

    def provider_health(self, label: str) -> str:
        """The circuit breaker hash of provider target ``label`` (``provider/model``); its
        probe token is this key + ``:probe`` (same hash tag, one slot)."""
        if not (0 < len(label) <= 240 and label.isascii() and label.isprintable()):
            raise ConfigError(f"provider target label {_shown(label)} is not 1-240 ASCII chars")
        if any(c in label for c in "{} "):
            raise ConfigError(f"provider target label {_shown(label)} has '{{', '}}' or a space")
        return f"{self.namespace}:{{ph:{label}}}"

    def job_id(self, session_id: str, epoch: int) -> str:
        """The deterministic arq job id of ``session_id``'s owner for ``epoch``."""
        if not isinstance(epoch, int) or epoch < 1:
            raise ConfigError(f"epoch must be a positive integer, got {epoch!r}")
        return f"{self.namespace}:session:{validate_session_id(session_id)}:{epoch}"
