"""The gateway's configuration: the common settings (:mod:`redisio.settings`) plus its port,
caller token and connection limit.

:data:`ENVIRONMENT` lists every variable ``voicegrid gateway`` reads, with default and meaning.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from redisio.settings import COMMON_ENVIRONMENT, CommonSettings, EnvTable, env_int

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
}


@dataclasses.dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    """Everything a gateway process reads from its environment."""

    gateway_port: int = GATEWAY_PORT
    gateway_token: str = dataclasses.field(default="", repr=False)
    gateway_max_connections: int = GATEWAY_MAX_CONNECTIONS

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
        )
