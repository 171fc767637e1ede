"""The worker's configuration: the common settings (:mod:`redisio.settings`) plus provider
credentials and endpoints, capacity, the lease timing and the worker's identity.

:data:`ENVIRONMENT` lists every variable ``voicegrid worker`` reads, with default and meaning.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from protocol.errors import ConfigError
from redisio.settings import COMMON_ENVIRONMENT, CommonSettings, EnvTable, env_float, env_int

__all__ = [
    "ENVIRONMENT",
    "LEASE_RENEW_S",
    "LEASE_TTL_S",
    "MAX_LOOP_LAG_S",
    "MAX_SESSIONS",
    "WorkerSettings",
]

#: Default seconds a session lease lives without renewal; a dead owner is replaced after this.
#: With renewals every LEASE_RENEW_S a takeover starts 1.5-2 s after a SIGKILL, while a worker
#: whose event loop stalls 1 s (renewals 1.5 s apart) keeps its leases with 0.5 s to spare
#: (docs/operations.md, "Lease timing").
LEASE_TTL_S = 2.0
#: Default seconds between lease renewals (a quarter of the TTL: a stall of up to
#: TTL - renewal interval = 1.5 s, minus Redis latency, is survived).
LEASE_RENEW_S = 0.5
#: Default number of sessions one worker runs at most.
MAX_SESSIONS = 100
#: Default event-loop lag (smoothed, seconds) above which a worker takes no new session: 2.5
#: frames of 20 ms, where callers' jitter buffers (40-60 ms) run dry; far above a healthy loop's
#: 1-2 ms, so it never caps a healthy worker below MAX_SESSIONS (docs/decisions.md, 2026-12-06).
MAX_LOOP_LAG_S = 0.05

ENVIRONMENT: EnvTable = {
    **COMMON_ENVIRONMENT,
    "OPENAI_API_KEY": ("", "secret: OpenAI API key (Azure: the resource key)"),
    "GEMINI_API_KEY": ("", "secret: Gemini API key"),
    "VOICEGRID_OPENAI_URL": ("", "OpenAI realtime endpoint override (simulator, Azure)"),
    "VOICEGRID_GEMINI_URL": ("", "Gemini endpoint override (simulator, Vertex)"),
    "VOICEGRID_MAX_SESSIONS": (str(MAX_SESSIONS), "sessions one worker runs at most"),
    "VOICEGRID_LEASE_TTL_S": (str(LEASE_TTL_S), "session lease lifetime without renewal, s"),
    "VOICEGRID_LEASE_RENEW_S": (str(LEASE_RENEW_S), "session lease renewal interval, s"),
    "VOICEGRID_MAX_LOOP_LAG_S": (
        str(MAX_LOOP_LAG_S),
        "event-loop lag budget, s: above it the worker takes no new session until the lag is "
        "below half of it",
    ),
    "VOICEGRID_WORKER_ID": ("", "worker identity in leases (default: hostname-pid)"),
}


@dataclasses.dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    """Everything a worker process reads from its environment."""

    openai_api_key: str = dataclasses.field(default="", repr=False)
    gemini_api_key: str = dataclasses.field(default="", repr=False)
    openai_url: str = ""
    gemini_url: str = ""
    max_sessions: int = MAX_SESSIONS
    lease_ttl_s: float = LEASE_TTL_S
    lease_renew_s: float = LEASE_RENEW_S
    max_loop_lag_s: float = MAX_LOOP_LAG_S
    worker_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read and validate the environment; a bad value raises ``ConfigError`` naming it."""
        env = os.environ if env is None else env
        ttl = env_float(env, ENVIRONMENT, "VOICEGRID_LEASE_TTL_S", 0.2, 60.0)
        renew = env_float(env, ENVIRONMENT, "VOICEGRID_LEASE_RENEW_S", 0.05, 30.0)
        if renew * 2 > ttl:
            raise ConfigError(
                f"VOICEGRID_LEASE_RENEW_S={renew} must be at most half of "
                f"VOICEGRID_LEASE_TTL_S={ttl}, so one late renewal does not lose the lease"
            )
        return cls(
            **cls.common_from_env(env),
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            gemini_api_key=env.get("GEMINI_API_KEY", ""),
            openai_url=env.get("VOICEGRID_OPENAI_URL", ""),
            gemini_url=env.get("VOICEGRID_GEMINI_URL", ""),
            max_sessions=env_int(env, ENVIRONMENT, "VOICEGRID_MAX_SESSIONS", 1, 100_000),
            lease_ttl_s=ttl,
            lease_renew_s=renew,
            max_loop_lag_s=env_float(env, ENVIRONMENT, "VOICEGRID_MAX_LOOP_LAG_S", 0.005, 60.0),
            worker_id=env.get("VOICEGRID_WORKER_ID", ""),
        )
