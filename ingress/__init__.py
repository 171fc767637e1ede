"""The ingress side: ``RedisRealtimeClient`` and the WebSocket gateway."""
