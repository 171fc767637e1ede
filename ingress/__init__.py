"""The ingress side: ``RedisRealtimeClient`` and the WebSocket gateway."""

from .client import RedisRealtimeClient

__all__ = ["RedisRealtimeClient"]
