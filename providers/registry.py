"""The provider registry: name -> client factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from protocol import ConfigError, RealtimeAudioClient

__all__ = ["create_client", "register_provider", "registered_providers"]

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
    **options: Any,
) -> RealtimeAudioClient:
    """Build a ready, unconnected client for ``provider``."""
    return _factory(provider)(model=model, api_key=api_key, url=url, **options)
