"""Configuration every voicegrid process reads from its environment (12-factor).

Each role lists its variables with default and meaning in an environment table: the common ones
here (:data:`COMMON_ENVIRONMENT`), the worker's in :mod:`worker.settings`, the gateway's in
:mod:`ingress.settings`. ``voicegrid <role> --help`` prints the table; the operations guide and
the Kubernetes ConfigMap are checked against it. A bad value raises ``ConfigError`` naming the
variable, the value and the expected form. Secrets (API keys, tokens, the password inside
``REDIS_URL``) are never logged: settings hide them from their ``repr`` and :func:`redact_url`
removes passwords from URLs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from protocol.errors import ConfigError
from protocol.keys import DEFAULT_BUCKETS, MAX_BUCKETS, Keys, validate_namespace
from protocol.options import OptionRule, parse_caller_options
from protocol.streams import EntryLimits

__all__ = [
    "CLUSTER_SCHEMES",
    "COMMON_ENVIRONMENT",
    "DRAIN_TIMEOUT_S",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "METRICS_PORT",
    "SENTINEL_SCHEMES",
    "CommonSettings",
    "EnvTable",
    "SentinelTarget",
    "batch_linger_s",
    "entry_limits",
    "env_float",
    "env_int",
    "format_environment",
    "is_cluster_url",
    "redact_url",
    "sentinel_target",
]

#: Default seconds a SIGTERM'd process takes at most to hand its sessions over and exit.
DRAIN_TIMEOUT_S = 20.0
#: Default port of ``/metrics``, ``/healthz`` and ``/readyz``.
METRICS_PORT = 9464
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
#: ``REDIS_URL`` schemes that mean a Redis Cluster (TCP, TLS).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Schemes of a single-node Redis whose primary Redis Sentinel names (TCP, TLS): it fails over.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_NODE_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
_SENTINEL_FORM = (
    "redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/<db>]"
    "[?sentinel_password=...] (rediss+sentinel:// with TLS)"
)

_LIMITS = EntryLimits()  # the defaults

#: name -> (default, meaning). Secrets have default "" and say "secret" in the meaning.
EnvTable = dict[str, tuple[str, str]]

COMMON_ENVIRONMENT: EnvTable = {
    "REDIS_URL": (
        "redis://127.0.0.1:6379/0",
        "Redis for session streams (and, unless VOICEGRID_QUEUE_URL is set, the arq queue): "
        "redis:// or rediss:// (TLS), optional user:password@ and /db number; a Redis that "
        "Sentinel fails over: redis+sentinel://[user:password@]host:port[,host:port...]/<service>"
        "[/<db>] (the Sentinels; ?sentinel_password= when they have one of their own); or a "
        "Redis Cluster: redis+cluster://[user:password@]host:port[,host:port...] "
        "(rediss+cluster:// with TLS)",
    ),
    "VOICEGRID_QUEUE_URL": (
        "",
        "single-node Redis for the arq queue and the keys that span sessions (<ns>:live, "
        "<ns>:create): redis://, rediss://, unix:// or redis+sentinel:// (as REDIS_URL); "
        "empty: REDIS_URL. Required when REDIS_URL is a cluster",
    ),
    "VOICEGRID_CLUSTER_BUCKETS": (
        str(DEFAULT_BUCKETS),
        f"with a cluster REDIS_URL: hash-tag buckets sessions are spread over (1..{MAX_BUCKETS}; "
        "at least the number of primaries). Ingress and workers must agree; change it only "
        "with no session live",
    ),
    "VOICEGRID_NAMESPACE": (
        "voicegrid",
        "prefix of every Redis key and of the arq queue, so deployments and test runs can "
        "share one Redis (ingress and workers of one deployment must agree)",
    ),
    "VOICEGRID_METRICS_PORT": (str(METRICS_PORT), "port of /metrics, /healthz and /readyz"),
    "VOICEGRID_LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR"),
    "VOICEGRID_LOG_FORMAT": ("text", "text, or json: one JSON object per line"),
    "VOICEGRID_BATCH_LINGER_MS": (
        "5",
        "least ms between two Redis reads, or two write rounds, of one process while data keeps "
        "coming (0..50): what arrives meanwhile shares one round. Higher: less CPU, more latency",
    ),
    "VOICEGRID_DRAIN_TIMEOUT_S": (
        str(DRAIN_TIMEOUT_S),
        "on SIGTERM: seconds to hand sessions (or callers) over before exiting",
    ),
    "VOICEGRID_CALLER_OPTIONS": (
        "",
        "provider options a session's caller may set, with bounds, replacing each provider's "
        "defaults: comma-separated name:text[:MAXCHARS], name:flag, name:int:LOW..HIGH or "
        "name:number:LOW..HIGH; none: no option at all (gateway and worker)",
    ),
    "VOICEGRID_MAX_AUDIO_ENTRY_MS": (
        str(_LIMITS.audio_ms),
        "largest caller audio entry, ms of the session's input format (20..10000); larger "
        "frames are refused (ingress: EntryTooLarge; worker: an error event, never forwarded)",
    ),
    "VOICEGRID_MAX_COMMAND_BYTES": (
        str(_LIMITS.command_bytes),
        "largest JSON body of one command (config update, tool results, instruction), bytes "
        "(1024..8388608)",
    ),
    "VOICEGRID_MAX_TOOL_OUTPUT_BYTES": (
        str(_LIMITS.tool_output_bytes),
        "largest JSON of one tool result's output, bytes (1024..8388608)",
    ),
}


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors); also a cluster or
    Sentinel URL with several ``host:port`` and ``password=`` / ``sentinel_password=`` query
    parameters."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        f"{name}=***" if name.lower().endswith("password") else f"{name}{eq}{value}"
        for name, eq, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names: the Sentinels to ask, the service (the monitored
    primary's name) and how to talk to that primary."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    ssl: bool = False


def sentinel_target(url: str, variable: str = "REDIS_URL") -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; ``ConfigError`` naming ``variable``, the (redacted)
    value and the expected form otherwise."""
    parts = urlsplit(url)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{variable}={redact_url(url)!r}: {why}; expected {_SENTINEL_FORM}")

    if parts.scheme not in SENTINEL_SCHEMES:
        raise bad(f"scheme {parts.scheme!r} is not a Sentinel URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise bad(f"Sentinel {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [unquote(piece) for piece in parts.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2:
        raise bad("the path must name the service (the primary Sentinel monitors)")
    db = 0
    if len(path) == 2 and path[1]:
        if not path[1].isdigit():
            raise bad(f"database {path[1]!r} is not a number")
        db = int(path[1])
    username = password = sentinel_password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    for name, value in parse_qsl(parts.query):
        if name == "sentinel_password":
            sentinel_password = value
        else:
            raise bad(f"query option {name!r} is not supported; only sentinel_password")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        ssl=parts.scheme == "rediss+sentinel",
    )


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def _raw(env: Mapping[str, str], table: EnvTable, name: str) -> str:
    return env.get(name, table[name][0]).strip()


def env_int(env: Mapping[str, str], table: EnvTable, name: str, low: int, high: int) -> int:
    """The integer ``name`` (default from ``table``) within ``low..high``."""
    raw = _raw(env, table, name)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer; expected an integer in {low}..{high}"
        ) from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; expected an integer in {low}..{high}")
    return value


def env_float(env: Mapping[str, str], table: EnvTable, name: str, low: float, high: float) -> float:
    """The number ``name`` (default from ``table``) within ``low..high`` (never NaN)."""
    raw = _raw(env, table, name)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise ConfigError(f"{name}={raw!r} is not a number; expected a number in {low}..{high}")
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; expected a number in {low}..{high}")
    return value


def batch_linger_s(env: Mapping[str, str] | None = None) -> float:
    """``VOICEGRID_BATCH_LINGER_MS`` in seconds (what the pumps of this process linger)."""
    env = os.environ if env is None else env
    return env_float(env, COMMON_ENVIRONMENT, "VOICEGRID_BATCH_LINGER_MS", 0.0, 50.0) / 1000


def entry_limits(env: Mapping[str, str] | None = None) -> EntryLimits:
    """The input entry size limits of this process (``VOICEGRID_MAX_*``, docs/streams.md)."""
    env = os.environ if env is None else env
    table = COMMON_ENVIRONMENT
    return EntryLimits(
        audio_ms=env_int(env, table, "VOICEGRID_MAX_AUDIO_ENTRY_MS", 20, 10_000),
        command_bytes=env_int(env, table, "VOICEGRID_MAX_COMMAND_BYTES", 1024, 8 * 1024 * 1024),
        tool_output_bytes=env_int(
            env, table, "VOICEGRID_MAX_TOOL_OUTPUT_BYTES", 1024, 8 * 1024 * 1024
        ),
    )


def format_environment(table: EnvTable) -> str:
    """``table`` as the help text of a command: one variable per paragraph."""
    lines = ["environment variables (default in brackets):"]
    for name, (default, meaning) in table.items():
        shown = "" if meaning.startswith("secret") else f" [{default or 'empty'}]"
        lines.append(f"  {name}{shown}")
        lines += textwrap.wrap(meaning, 94, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """What every process role reads: where Redis is, the key namespace, logging, the metrics
    port and the drain budget."""

    redis_url: str = dataclasses.field(repr=False)
    namespace: str = "voicegrid"
    #: the single-node Redis of the queue and cross-session keys ("": ``redis_url``)
    queue_url: str = dataclasses.field(default="", repr=False)
    #: hash-tag buckets of the session keys on a cluster (unused on a single Redis)
    cluster_buckets: int = DEFAULT_BUCKETS
    metrics_port: int = METRICS_PORT
    log_level: str = "INFO"
    log_format: str = "text"
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    batch_linger_s: float = 0.005
    limits: EntryLimits = dataclasses.field(default_factory=EntryLimits)
    #: the provider options callers may set (``None``: each provider's defaults)
    caller_options: dict[str, OptionRule] | None = None

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)

    @property
    def cluster(self) -> bool:
        """True when the session streams live on a Redis Cluster."""
        return is_cluster_url(self.redis_url)

    @property
    def queue_redis_url(self) -> str:
        """The Redis of the arq queue and the cross-session keys."""
        return self.queue_url or self.redis_url

    def key_layout(self) -> Keys:
        """The key layout of this deployment: bucket tags on a cluster, ``{<sid>}`` otherwise."""
        return Keys(self.namespace, self.cluster_buckets if self.cluster else 0)

    @classmethod
    def common_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        """The common fields, read and validated; a bad value raises ``ConfigError``."""
        table = COMMON_ENVIRONMENT
        log_format = _raw(env, table, "VOICEGRID_LOG_FORMAT").lower()
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"VOICEGRID_LOG_FORMAT={log_format!r}; expected text or json")
        log_level = _raw(env, table, "VOICEGRID_LOG_LEVEL").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                f"VOICEGRID_LOG_LEVEL={log_level!r}; expected DEBUG, INFO, WARNING or ERROR"
            )
        return {
            **cls.redis_from_env(env),
            "metrics_port": env_int(env, table, "VOICEGRID_METRICS_PORT", 0, 65535),
            "log_level": log_level,
            "log_format": log_format,
            "drain_timeout_s": env_float(env, table, "VOICEGRID_DRAIN_TIMEOUT_S", 0.0, 3600.0),
            "batch_linger_s": batch_linger_s(env),
            "limits": entry_limits(env),
            "caller_options": parse_caller_options(_raw(env, table, "VOICEGRID_CALLER_OPTIONS")),
        }

    @classmethod
    def redis_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        """Where the keys live: ``REDIS_URL``, ``VOICEGRID_QUEUE_URL``,
        ``VOICEGRID_CLUSTER_BUCKETS`` and ``VOICEGRID_NAMESPACE``, validated."""
        table = COMMON_ENVIRONMENT
        redis_url = _raw(env, table, "REDIS_URL")
        if urlsplit(redis_url).scheme not in _NODE_SCHEMES + CLUSTER_SCHEMES:
            raise ConfigError(
                f"REDIS_URL={redact_url(redis_url)!r} has an unsupported scheme; expected "
                "redis://host:port/db, rediss:// (TLS), unix:///path, a Redis that Sentinel "
                "fails over: redis+sentinel://host:port[,host:port...]/<service>[/<db>], or a "
                "Redis Cluster: redis+cluster://host:port[,host:port...] (rediss+cluster:// "
                "with TLS)"
            )
        if urlsplit(redis_url).scheme in SENTINEL_SCHEMES:
            sentinel_target(redis_url, "REDIS_URL")
        queue_url = _raw(env, table, "VOICEGRID_QUEUE_URL")
        if queue_url and urlsplit(queue_url).scheme not in _NODE_SCHEMES:
            raise ConfigError(
                f"VOICEGRID_QUEUE_URL={redact_url(queue_url)!r} is not a single-node Redis URL "
                "(arq's queue cannot run on a cluster); expected redis://host:port/db, "
                "rediss:// (TLS), unix:///path or redis+sentinel://host:port/<service>"
            )
        if urlsplit(queue_url).scheme in SENTINEL_SCHEMES:
            sentinel_target(queue_url, "VOICEGRID_QUEUE_URL")
        if is_cluster_url(redis_url) and not queue_url:
            raise ConfigError(
                f"REDIS_URL={redact_url(redis_url)!r} is a Redis Cluster, so "
                "VOICEGRID_QUEUE_URL must name the single-node Redis of the arq queue and the "
                "cross-session keys; expected redis://host:port/db (or rediss://)"
            )
        return {
            "redis_url": redis_url,
            "queue_url": queue_url,
            "cluster_buckets": env_int(env, table, "VOICEGRID_CLUSTER_BUCKETS", 1, MAX_BUCKETS),
            "namespace": validate_namespace(_raw(env, table, "VOICEGRID_NAMESPACE")),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CommonSettings:
        """Read and validate the environment; a bad value raises ``ConfigError`` naming it."""
        return cls(**cls.common_from_env(os.environ if env is None else env))
