"""Worker-side provider failover: a session whose config names ``fallbacks`` runs on a
``providers.fallback.FallbackClient`` built with this worker's credentials and the fleet's
shared circuit breaker (``redisio.health.ProviderBreaker``), so a provider one worker saw fail
is skipped by every worker's new sessions (``docs/operations.md``, "Provider failover").
"""

from __future__ import annotations

import weakref
from typing import Any

from protocol import ConnectionEvent, ProviderTarget, RealtimeAudioClient
from providers.fallback import FallbackClient, LocalHealth, ProviderHealth
from providers.registry import build_target
from redisio.health import ProviderBreaker
from redisio.metrics import PROVIDER_FAILOVERS

from .settings import WorkerSettings

__all__ = ["breaker_for", "build_client", "count_failover", "credentials"]

_BREAKERS: weakref.WeakKeyDictionary[Any, ProviderHealth] = weakref.WeakKeyDictionary()


def credentials(settings: WorkerSettings, provider: str) -> dict[str, str | None]:
    """This worker's key and endpoint for ``provider`` (never the session record's)."""
    if provider == "openai":
        return {"api_key": settings.openai_api_key or None, "url": settings.openai_url or None}
    if provider == "gemini":
        return {"api_key": settings.gemini_api_key or None, "url": settings.gemini_url or None}
    return {"api_key": None, "url": None}


def breaker_for(runtime: Any) -> ProviderHealth:
    """The runtime's shared breaker (one per worker process; in Redis when it has one)."""
    breaker = _BREAKERS.get(runtime)
    if breaker is None:
        redis, keys = getattr(runtime, "redis", None), getattr(runtime, "keys", None)
        breaker = ProviderBreaker(redis, keys) if redis is not None and keys else LocalHealth()
        _BREAKERS[runtime] = breaker
    return breaker


def build_client(
    runtime: Any, primary: ProviderTarget, fallbacks: list[ProviderTarget]
) -> RealtimeAudioClient:
    """A fallback client over ``primary`` then ``fallbacks`` with this worker's credentials."""
    settings: WorkerSettings = runtime.settings
    return FallbackClient(
        [primary, *fallbacks],
        lambda target: build_target(target, credentials(settings, target.provider)),
        health=breaker_for(runtime),
    )


def count_failover(previous: str, event: ConnectionEvent) -> str:
    """Count a ``reconnected(strategy="failover")``; return the session's provider now."""
    provider = event.provider or previous
    PROVIDER_FAILOVERS.labels(previous, provider, event.reason or "unreachable").inc()
    return provider
