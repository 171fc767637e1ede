"""The ingress side: ``RedisRealtimeClient`` and the WebSocket gateway."""

from .client import RedisRealtimeClient
from .media_tokens import mint_media_token

__all__ = ["RedisRealtimeClient", "mint_media_token"]
