"""``/metrics``, ``/healthz`` and ``/readyz`` on ``VOICEGRID_METRICS_PORT`` (docs/operations.md).

- ``/metrics``: the Prometheus text format of ``redisio.metrics.REGISTRY``.
- ``/healthz``: 200 while the process is alive and its event loop responsive (the heartbeat task
  ticked within the last few seconds), else 503. Kubernetes restarts the pod on failure.
- ``/readyz``: 200 while Redis is reachable, the worker is not draining, not overloaded (its
  event-loop lag is within budget, see ``worker.admission``) and it has capacity left, else 503
  with the reason. Informational for a worker (arq pulls work, nothing is routed
  to it), used by the deploy's probes and dashboards.

A minimal HTTP/1.0 responder on ``asyncio.start_server``: three fixed GET routes need no
framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sized
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import REGISTRY

if TYPE_CHECKING:
    from .connection import RedisHealth

__all__ = ["LOOP_STALL_S", "HealthServer", "Probed"]

#: The event loop counts as unresponsive when the heartbeat is older than this.
LOOP_STALL_S = 5.0


class _Capacity(Protocol):
    @property
    def max_sessions(self) -> int: ...


class Probed(Protocol):
    """What the routes read: a worker's ``WorkerRuntime``, or the gateway's view of itself
    (``sessions`` are then its caller connections, ``settings.max_sessions`` their limit)."""

    @property
    def loop_tick(self) -> float: ...

    @property
    def draining(self) -> bool: ...

    @property
    def overloaded(self) -> bool:
        """True while the process takes no new work because its event loop is too slow."""
        ...

    @property
    def health(self) -> RedisHealth: ...

    @property
    def sessions(self) -> Sized: ...

    @property
    def settings(self) -> _Capacity: ...


class HealthServer:
    """Serves the three routes for one worker runtime (or gateway)."""

    def __init__(self, runtime: Probed, *, port: int, host: str = "0.0.0.0") -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; port 0 picks a free port, stored in ``port``."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def route(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for ``path``."""
        runtime = self.runtime
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if path == "/healthz":
            stalled = time.monotonic() - runtime.loop_tick
            if stalled > LOOP_STALL_S:
                return 503, "text/plain", f"event loop stalled {stalled:.1f}s\n".encode()
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if runtime.draining:
                return 503, "text/plain", b"draining\n"
            if not runtime.health.reachable():
                return 503, "text/plain", b"redis unreachable\n"
            if runtime.overloaded:
                return 503, "text/plain", b"overloaded: event loop lag over budget\n"
            active, capacity = len(runtime.sessions), runtime.settings.max_sessions
            if active >= capacity:
                return 503, "text/plain", f"full: {active}/{capacity} sessions\n".encode()
            return 200, "text/plain", f"ready: {active}/{capacity} sessions\n".encode()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            parts = request.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            else:
                path = parts[1].decode("latin-1").split("?", 1)[0]
                status, ctype, body = self.route(path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            head = (
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if parts[:1] == [b"HEAD"] else head + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
