"""Worker and gateway configuration from the environment (12-factor, ARCHITECTURE §5).

Every variable, its default and meaning is listed in ``ENVIRONMENT`` (the operations guide and
the Kubernetes ConfigMap are checked against it). Secrets (``OPENAI_API_KEY``,
``GEMINI_API_KEY``, the password inside ``REDIS_URL``) are never logged: ``WorkerSettings``
hides them from its ``repr`` and :func:`redact_url` removes passwords from URLs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from protocol.errors import ConfigError
from protocol.keys import validate_namespace

__all__ = [
    "DRAIN_TIMEOUT_S",
    "ENVIRONMENT",
    "GATEWAY_MAX_CONNECTIONS",
    "GATEWAY_PORT",
    "LEASE_RENEW_S",
    "LEASE_TTL_S",
    "METRICS_PORT",
    "WorkerSettings",
    "redact_url",
]

#: Default seconds a session lease lives without renewal; a dead owner is replaced after this.
LEASE_TTL_S = 3.0
#: Default seconds between lease renewals (well under the TTL, so one slow renewal is survived).
LEASE_RENEW_S = 1.0
#: Default seconds a SIGTERM'd worker takes at most to hand its sessions over and exit.
DRAIN_TIMEOUT_S = 20.0
#: Default port of ``/metrics``, ``/healthz`` and ``/readyz``.
METRICS_PORT = 9464
#: Default port of the gateway's caller WebSocket (``voicegrid gateway``).
GATEWAY_PORT = 8080
#: Default number of caller WebSockets one gateway serves at most: a gateway relays a session for
#: about 5.3 ms of CPU per second (measured, docs/gateway.md), so 120 keep its core below 70 %.
GATEWAY_MAX_CONNECTIONS = 120

#: name -> (default, meaning). Secrets have default "" and are marked secret in the meaning.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "REDIS_URL": (
        "redis://127.0.0.1:6379/0",
        "Redis for session streams and the arq queue: redis:// or rediss:// (TLS), "
        "optional user:password@ and /db number",
    ),
    "OPENAI_API_KEY": ("", "secret: OpenAI API key (Azure: the resource key)"),
    "GEMINI_API_KEY": ("", "secret: Gemini API key"),
    "VOICEGRID_OPENAI_URL": ("", "OpenAI realtime endpoint override (simulator, Azure)"),
    "VOICEGRID_GEMINI_URL": ("", "Gemini endpoint override (simulator, Vertex)"),
    "VOICEGRID_MAX_SESSIONS": ("100", "sessions one worker runs at most (arq max_jobs)"),
    "VOICEGRID_METRICS_PORT": (str(METRICS_PORT), "port of /metrics, /healthz and /readyz"),
    "VOICEGRID_LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR"),
    "VOICEGRID_LOG_FORMAT": ("text", "text or json"),
    "VOICEGRID_LEASE_TTL_S": (str(LEASE_TTL_S), "session lease lifetime without renewal, s"),
    "VOICEGRID_LEASE_RENEW_S": (str(LEASE_RENEW_S), "session lease renewal interval, s"),
    "VOICEGRID_DRAIN_TIMEOUT_S": (
        str(DRAIN_TIMEOUT_S),
        "on SIGTERM: seconds to hand sessions over before exiting",
    ),
    "VOICEGRID_WORKER_ID": ("", "worker identity in leases (default: hostname-pid)"),
    "VOICEGRID_NAMESPACE": (
        "voicegrid",
        "prefix of every Redis key and of the arq queue, so deployments and test runs can "
        "share one Redis (ingress and workers of one deployment must agree)",
    ),
    "VOICEGRID_GATEWAY_PORT": (
        str(GATEWAY_PORT),
        "gateway: port of the caller WebSocket (/v1/sessions)",
    ),
    "VOICEGRID_GATEWAY_TOKEN": (
        "",
        "secret: gateway: bearer token callers must send (Authorization: Bearer <token>); "
        "empty: no authentication",
    ),
    "VOICEGRID_GATEWAY_MAX_CONNECTIONS": (
        str(GATEWAY_MAX_CONNECTIONS),
        "gateway: caller WebSockets one gateway serves at most (then /readyz reports full)",
    ),
}


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _int(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    raw = env.get(name, ENVIRONMENT[name][0])
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; expected {low}..{high}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; expected {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, low: float, high: float) -> float:
    raw = env.get(name, ENVIRONMENT[name][0])
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; expected {low}..{high}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; expected {low}..{high}")
    return value


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker or gateway process reads from its environment."""

    redis_url: str = dataclasses.field(repr=False)
    openai_api_key: str = dataclasses.field(default="", repr=False)
    gemini_api_key: str = dataclasses.field(default="", repr=False)
    openai_url: str = ""
    gemini_url: str = ""
    max_sessions: int = 100
    metrics_port: int = METRICS_PORT
    log_level: str = "INFO"
    log_format: str = "text"
    lease_ttl_s: float = LEASE_TTL_S
    lease_renew_s: float = LEASE_RENEW_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    worker_id: str = ""
    namespace: str = "voicegrid"
    gateway_port: int = GATEWAY_PORT
    gateway_token: str = dataclasses.field(default="", repr=False)
    gateway_max_connections: int = GATEWAY_MAX_CONNECTIONS

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read and validate the environment; a bad value raises ``ConfigError`` naming it."""
        env = os.environ if env is None else env
        redis_url = env.get("REDIS_URL", ENVIRONMENT["REDIS_URL"][0])
        if urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(
                f"REDIS_URL={redact_url(redis_url)!r} has an unsupported scheme; expected "
                "redis://, rediss:// or unix://"
            )
        log_format = env.get("VOICEGRID_LOG_FORMAT", "text")
        if log_format not in {"text", "json"}:
            raise ConfigError(f"VOICEGRID_LOG_FORMAT={log_format!r}; expected text or json")
        log_level = env.get("VOICEGRID_LOG_LEVEL", "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"VOICEGRID_LOG_LEVEL={log_level!r}; expected DEBUG, INFO, WARNING or ERROR"
            )
        ttl = _float(env, "VOICEGRID_LEASE_TTL_S", 0.2, 60.0)
        renew = _float(env, "VOICEGRID_LEASE_RENEW_S", 0.05, 30.0)
        if renew * 2 > ttl:
            raise ConfigError(
                f"VOICEGRID_LEASE_RENEW_S={renew} must be at most half of "
                f"VOICEGRID_LEASE_TTL_S={ttl}, so one late renewal does not lose the lease"
            )
        return cls(
            redis_url=redis_url,
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            gemini_api_key=env.get("GEMINI_API_KEY", ""),
            openai_url=env.get("VOICEGRID_OPENAI_URL", ""),
            gemini_url=env.get("VOICEGRID_GEMINI_URL", ""),
            max_sessions=_int(env, "VOICEGRID_MAX_SESSIONS", 1, 100_000),
            metrics_port=_int(env, "VOICEGRID_METRICS_PORT", 0, 65535),
            log_level=log_level,
            log_format=log_format,
            lease_ttl_s=ttl,
            lease_renew_s=renew,
            drain_timeout_s=_float(env, "VOICEGRID_DRAIN_TIMEOUT_S", 0.0, 3600.0),
            worker_id=env.get("VOICEGRID_WORKER_ID", ""),
            namespace=validate_namespace(env.get("VOICEGRID_NAMESPACE", "voicegrid")),
            gateway_port=_int(env, "VOICEGRID_GATEWAY_PORT", 0, 65535),
            gateway_token=env.get("VOICEGRID_GATEWAY_TOKEN", ""),
            gateway_max_connections=_int(env, "VOICEGRID_GATEWAY_MAX_CONNECTIONS", 1, 1_000_000),
        )
