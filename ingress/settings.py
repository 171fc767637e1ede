"""The gateway's configuration: the common settings (:mod:`redisio.settings`) plus its port,
caller token and connection limit, and the media legs' secrets (``docs/telephony.md``).

:data:`ENVIRONMENT` lists every variable ``voicegrid gateway`` reads, with default and meaning.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from protocol.errors import ConfigError
from redisio.settings import COMMON_ENVIRONMENT, CommonSettings, EnvTable, env_float, env_int

__all__ = ["ENVIRONMENT", "GATEWAY_MAX_CONNECTIONS", "GATEWAY_PORT", "GatewaySettings"]

#: Default port of the gateway's caller WebSocket (``voicegrid gateway``).
GATEWAY_PORT = 8080
#: Default number of caller WebSockets one gateway serves at most: a gateway relays a session for
#: about 5.3 ms of CPU per second (measured, docs/gateway.md), so 120 keep its core below 70 %.
GATEWAY_MAX_CONNECTIONS = 120

ENVIRONMENT: EnvTable = {
    **COMMON_ENVIRONMENT,
    "VOICEGRID_GATEWAY_PORT": (str(GATEWAY_PORT), "port of the caller WebSocket (/v1/sessions)"),
    "VOICEGRID_GATEWAY_TOKEN": (
        "",
        "secret: bearer token callers must send (Authorization: Bearer <token>); "
        "empty: no authentication",
    ),
    "VOICEGRID_GATEWAY_MAX_CONNECTIONS": (
        str(GATEWAY_MAX_CONNECTIONS),
        "caller WebSockets one gateway serves at most (then /readyz reports full)",
    ),
    "VOICEGRID_MEDIA_TOKEN_SECRET": (
        "",
        "secret (32+ bytes) signing the media tokens of phone and browser legs; shared with "
        "backends that mint them; empty: the media endpoints refuse every leg",
    ),
    "VOICEGRID_MEDIA_TOKEN_TTL_S": (
        "60",
        "lifetime of a token from POST /v1/sessions/{id}/media-token (1..3600 s)",
    ),
    "VOICEGRID_TWILIO_AUTH_TOKEN": (
        "",
        "secret: the Twilio account's auth token; set: X-Twilio-Signature is required on "
        "/v1/media/twilio; empty: not checked",
    ),
    "VOICEGRID_PUBLIC_URL": (
        "",
        "the gateway's public wss:// base URL as Twilio dials it (signature check behind a "
        "TLS proxy); empty: wss://<Host header>",
    ),
}


@dataclasses.dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    """Everything a gateway process reads from its environment."""

    gateway_port: int = GATEWAY_PORT
    gateway_token: str = dataclasses.field(default="", repr=False)
    gateway_max_connections: int = GATEWAY_MAX_CONNECTIONS
    media_token_secret: str = dataclasses.field(default="", repr=False)
    media_token_ttl_s: float = 60.0
    twilio_auth_token: str = dataclasses.field(default="", repr=False)
    public_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read and validate the environment; a bad value raises ``ConfigError`` naming it."""
        env = os.environ if env is None else env
        return cls(
            **cls.common_from_env(env),
            gateway_port=env_int(env, ENVIRONMENT, "VOICEGRID_GATEWAY_PORT", 0, 65535),
            gateway_token=env.get("VOICEGRID_GATEWAY_TOKEN", ""),
            gateway_max_connections=env_int(
                env, ENVIRONMENT, "VOICEGRID_GATEWAY_MAX_CONNECTIONS", 1, 1_000_000
            ),
            media_token_secret=_secret(env, "VOICEGRID_MEDIA_TOKEN_SECRET"),
            media_token_ttl_s=env_float(env, ENVIRONMENT, "VOICEGRID_MEDIA_TOKEN_TTL_S", 1, 3600),
            twilio_auth_token=env.get("VOICEGRID_TWILIO_AUTH_TOKEN", ""),
            public_url=_public_url(env.get("VOICEGRID_PUBLIC_URL", "")),
        )


def _secret(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if value and len(value.encode()) < 32:
        raise ConfigError(
            f"{name} has {len(value.encode())} bytes; expected at least 32 (or empty to disable)"
        )
    return value


def _public_url(value: str) -> str:
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(
            f"VOICEGRID_PUBLIC_URL={value!r}; expected a base URL like wss://voice.example.com"
        )
    return value.rstrip("/")
