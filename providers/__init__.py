"""Provider clients behind the one ``RealtimeAudioClient`` interface, and their registry.

``create_client(provider, *, model, api_key=None, url=None, **options)`` returns a ready,
unconnected client. ``api_key`` defaults to the provider's environment variable; ``url``
overrides the endpoint (simulators, Azure, Vertex).
"""

from .registry import (
    caller_options,
    check_options,
    create_client,
    register_provider,
    registered_providers,
)

__all__ = [
    "caller_options",
    "check_options",
    "create_client",
    "register_provider",
    "registered_providers",
]
