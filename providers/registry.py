"""The provider registry: name -> client factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from protocol import ConfigError, ProviderTarget, RealtimeAudioClient
from protocol.options import OptionRule, check_caller_options

__all__ = [
    "build_target",
    "caller_options",
    "check_options",
    "create_client",
    "register_provider",
    "registered_providers",
]

Factory = Callable[..., RealtimeAudioClient]

# Built-in providers are imported lazily so that importing ``providers`` stays cheap.
_BUILTIN: dict[str, str] = {
    "openai": "providers.openai:OpenAIRealtimeClient",
    "gemini": "providers.gemini:GeminiLiveClient",
}
_FACTORIES: dict[str, Factory] = {}

#: The options a session's caller may set on the built-in providers, with bounds: what shapes
#: the caller's own call (transcription model, how much audio to buffer, how much conversation
#: to replay). The connection policy (reconnects, backoff, recycling, pings, timeouts of the
#: handshake) and credentials stay the operator's. VOICEGRID_CALLER_OPTIONS replaces these.
_BUFFER = OptionRule("int", low=200, high=10_000)
_CALLER_OPTIONS: dict[str, dict[str, OptionRule]] = {
    "openai": {
        "transcription_model": OptionRule("text", high=128),
        "max_buffer_ms": _BUFFER,
        "replay_max_chars": OptionRule("int", low=1_000, high=40_000),
        "update_timeout_s": OptionRule("number", low=1, high=30),
    },
    "gemini": {
        "max_buffer_ms": _BUFFER,
        "max_history": OptionRule("int", low=10, high=200),
    },
}


def register_provider(
    name: str, factory: Factory, *, caller_options: Mapping[str, OptionRule] | None = None
) -> None:
    """Make ``create_client(name, ...)`` build clients with ``factory(model=..., **options)``.

    ``caller_options``: the options a session's caller may set, with bounds (none by default;
    see :mod:`protocol.options`)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"provider name {name!r} is invalid; expected letters, digits, - or _")
    _FACTORIES[name] = factory
    _CALLER_OPTIONS[name] = dict(caller_options or {})


def caller_options(name: str) -> dict[str, OptionRule]:
    """The options a caller may set on provider ``name`` by default (see ``register_provider``)."""
    return dict(_CALLER_OPTIONS.get(name, {}))


def check_options(
    provider: str, options: Mapping[str, Any], *, allowed: Mapping[str, OptionRule] | None
) -> None:
    """``ConfigError`` unless a caller may set ``options`` on ``provider``: ``allowed`` is the
    operator's list (``VOICEGRID_CALLER_OPTIONS``), ``None`` the provider's defaults."""
    rules = caller_options(provider) if allowed is None else allowed
    check_caller_options(options, rules, provider=provider)


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
