"""The provider registry: name -> client factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from protocol import ConfigError, ProviderTarget, RealtimeAudioClient

__all__ = ["build_target", "create_client", "register_provider", "registered_providers"]

Factory = Callable[..., RealtimeAudioClient]

# Built-in providers are imported lazily so that importing ``providers`` stays cheap.
_BUILTIN: dict[str, str] = {
    "openai": "providers.openai:OpenAIRealtimeClient",
    "gemini": "providers.gemini:GeminiLiveClient",
}
_FACTORIES: dict[str, Factory] = {}


def register_provider(name: str, factory: Factory) -> None:
    """Make ``create_client(name, ...)`` build clients with ``factory(model=..., **options)``."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"provider name {name!r} is invalid; expected letters, digits, - or _")
    _FACTORIES[name] = factory


def registered_providers() -> list[str]:
    return sorted(set(_BUILTIN) | set(_FACTORIES))


def _factory(name: str) -> Factory:
    if name in _FACTORIES:
        return _FACTORIES[name]
    target = _BUILTIN.get(name)
    if target is None:
        raise ConfigError(f"unknown provider {name!r}; expected one of {registered_providers()}")
    module_name, _, attr = target.partition(":")
    factory: Factory = getattr(importlib.import_module(module_name), attr)
    _FACTORIES[name] = factory
    return factory


def create_client(
    provider: str,
    *,
    model: str,
    api_key: str | None = None,
    url: str | None = None,
    fallbacks: Sequence[ProviderTarget | Mapping[str, Any]] | None = None,
    fallback_credentials: Mapping[str, Mapping[str, str | None]] | None = None,
    failover_policy: Any = None,
    provider_health: Any = None,
    **options: Any,
) -> RealtimeAudioClient:
    """Build a ready, unconnected client for ``provider``.

    With ``fallbacks`` (a list, possibly empty: then ``config.fallbacks`` at connect) the result
    is a :class:`providers.fallback.FallbackClient` that moves the session to the next target
    when this provider is down. ``fallback_credentials`` maps a provider name to its
    ``{"api_key": ..., "url": ...}`` (``None``/missing: the provider's environment variable and
    default endpoint); targets never carry credentials.
    """
    if fallbacks is None:
        return _factory(provider)(model=model, api_key=api_key, url=url, **options)
    from .fallback import FallbackClient, fallback_targets

    _factory(provider)  # an unknown primary fails now
    targets = fallback_targets(provider, model, options, fallbacks)
    for target in targets[1:]:
        _factory(target.provider)  # and so does an unknown fallback provider
    credentials = {name: dict(value) for name, value in (fallback_credentials or {}).items()}
    primary = targets[0]

    def factory(target: ProviderTarget) -> RealtimeAudioClient:
        if target is primary:
            return build_target(target, {"api_key": api_key, "url": url})
        return build_target(target, credentials.get(target.provider, {}))

    return FallbackClient(
        targets,
        factory,
        policy=failover_policy,
        health=provider_health,
    )


def build_target(
    target: ProviderTarget, credentials: Mapping[str, str | None]
) -> RealtimeAudioClient:
    """An unconnected client for one provider target with the process's ``credentials``."""
    return _factory(target.provider)(
        model=target.model,
        api_key=credentials.get("api_key"),
        url=credentials.get("url"),
        **target.options,
    )
