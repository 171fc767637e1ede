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

On Redis Cluster (``Keys(namespace, buckets=N)``, ``REDIS_URL=redis+cluster://...``) a session's
keys carry the tag of its *bucket* instead, so the sessions of one bucket share a slot and one
``XREAD`` or one fenced write covers all of a process's sessions in that bucket::

    <ns>:{<bucket tag>}:<sid>:in   (and :out, :state, :lease, :mt:<id>)
    <ns>:{<bucket tag>}:wake:<reader>  stream  wakes one process's reader of that bucket

The bucket of a session is ``slot(<sid>) mod N`` (``slot`` is Redis Cluster's CRC16 key slot, as
``CLUSTER KEYSLOT <sid>`` answers); bucket ``k``'s tag is ``vg<k>-<j>`` for the least ``j >= 0``
whose slot lies in the middle half of the ``k``-th of ``N`` equal slot ranges, so the buckets
spread evenly over primaries that split the slots evenly (:func:`bucket_tag`).

Keys that span sessions (on a cluster deployment they live on the queue Redis,
``VOICEGRID_QUEUE_URL``; arq needs a single-node Redis)::

    <ns>:queue            zset    the arq queue of session jobs
    <ns>:live             zset    open sessions -> lease deadline (ms); the reaper scans it
    <ns>:create           stream  session create requests, any Redis client (protocol/create.py)
    <ns>:create:rejected  stream  answers to create requests that have no session of their own
    <ns>:wake:<reader>    stream  wakes one process's blocking multiplexed XREAD (single node)
    <ns>:{ph:<target>}        hash    a provider target's circuit breaker (redisio/health.py)
    <ns>:{ph:<target>}:probe  string  the half-open probe token (SET NX PX)

Session ids are validated by :func:`validate_session_id` before they become part of a key.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from .errors import ConfigError, InvalidSessionId

__all__ = [
    "CLUSTER_SLOTS",
    "DEFAULT_BUCKETS",
    "DEFAULT_NAMESPACE",
    "MAX_BUCKETS",
    "NAMESPACE_PATTERN",
    "SESSION_ID_PATTERN",
    "Keys",
    "SessionKeys",
    "bucket_tag",
    "key_slot",
    "validate_namespace",
    "validate_session_id",
]

#: Key prefix when ``VOICEGRID_NAMESPACE`` is not set.
DEFAULT_NAMESPACE = "voicegrid"

#: 1-64 characters: ASCII letters, digits, ``_``, ``-`` and ``.`` (no ``{``, ``}``, ``:``, space).
SESSION_ID_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
#: 1-48 characters: ASCII letters, digits, ``_``, ``-`` and ``.``.
NAMESPACE_PATTERN = r"[A-Za-z0-9_.\-]{1,48}"

#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384
#: Session buckets of a cluster deployment when ``VOICEGRID_CLUSTER_BUCKETS`` is not set: 24
#: divides evenly over 2, 3, 4, 6, 8, 12 and 24 primaries (docs/decisions.md).
DEFAULT_BUCKETS = 24
#: Most buckets a deployment may use (one slot each; a process holds a reader lane per bucket).
MAX_BUCKETS = 1024

_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def key_slot(key: str | bytes) -> int:
    """Redis Cluster's hash slot of ``key``: CRC16 (XMODEM) of its hash tag (the part between
    the first ``{`` and the next ``}``, when not empty) or of the whole key, mod 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % CLUSTER_SLOTS


@functools.lru_cache(maxsize=4096)
def bucket_tag(bucket: int, buckets: int) -> str:
    """The hash tag (without braces) of ``bucket`` of ``buckets``: ``vg<bucket>-<j>`` for the
    least ``j`` whose slot lies in the middle half of the bucket's share of the slot range."""
    if not 0 <= bucket < buckets <= MAX_BUCKETS:
        raise ConfigError(f"bucket {bucket!r} of {buckets!r}: expected 0 <= bucket < buckets")
    low = bucket * CLUSTER_SLOTS / buckets
    width = CLUSTER_SLOTS / buckets
    lo, hi = low + width / 4, low + width * 3 / 4
    j = 0
    while not lo <= key_slot(f"vg{bucket}-{j}") < hi:
        j += 1
    return f"vg{bucket}-{j}"


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
    """The keys of one session; all share one hash tag: ``{<session_id>}`` on a single Redis,
    the tag of the session's bucket on a cluster."""

    session_id: str
    input: str
    output: str
    state: str
    lease: str
    #: what the keys' hash tag holds (the session id, or its bucket's tag)
    tag: str = ""

    @property
    def hash_tag(self) -> str:
        return "{" + (self.tag or self.session_id) + "}"

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
    """Key layout of one deployment (one namespace): ``buckets=0``, one hash tag per session
    (a single Redis); ``buckets=N``, sessions share the tags of N buckets (Redis Cluster)."""

    namespace: str = DEFAULT_NAMESPACE
    buckets: int = 0

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        if not isinstance(self.buckets, int) or not 0 <= self.buckets <= MAX_BUCKETS:
            raise ConfigError(
                f"buckets={self.buckets!r} is invalid; expected 0 (single Redis) or "
                f"1..{MAX_BUCKETS} (Redis Cluster)"
            )

    def session(self, session_id: str) -> SessionKeys:
        """The keys of ``session_id`` (validated first)."""
        sid = validate_session_id(session_id)
        if self.buckets:
            tag = self.bucket_tag(self.bucket_of(sid))
            base = f"{self.namespace}:{{{tag}}}:{sid}:"
        else:
            tag = sid
            base = f"{self.namespace}:{{{sid}}}:"
        return SessionKeys(
            session_id=sid,
            input=base + "in",
            output=base + "out",
            state=base + "state",
            lease=base + "lease",
            tag=tag,
        )

    def bucket_of(self, session_id: str) -> int:
        """The bucket of ``session_id``: its key slot mod ``buckets`` (0 on a single Redis)."""
        return key_slot(session_id) % self.buckets if self.buckets else 0

    def bucket_tag(self, bucket: int) -> str:
        """The hash tag (without braces) of ``bucket`` (:func:`bucket_tag`)."""
        return bucket_tag(bucket, self.buckets)

    def bucket_wake(self, tag: str, reader_id: str) -> str:
        """The wake-up stream of one process's reader of the bucket with hash tag ``tag``."""
        return f"{self.namespace}:{{{tag}}}:wake:{validate_session_id(reader_id)}"

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
