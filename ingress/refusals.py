"""Refusing a WebSocket upgrade with a plain-text HTTP answer, counted (``docs/gateway.md`` §1)."""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from redisio.metrics import GATEWAY_REJECTED

__all__ = ["refuse"]


def refuse(connection: ServerConnection, status: int, reason: str, text: str) -> Response:
    """The response refusing ``connection``'s upgrade with ``status`` and ``text``; counted in
    ``voicegrid_gateway_rejected_total{reason}``. A 503 says when to retry."""
    GATEWAY_REJECTED.labels(reason).inc()
    response = connection.respond(status, text + "\n")
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response
