"""Loopback WebSocket server infrastructure shared by every simulator front-end.

:class:`BaseSimulator` owns the listening socket, the accepted connections and the test API
documented in ``docs/simulator.md`` (``connections``, ``audio_in``, ``turns``, ``drop``,
``wait_for``). A front-end subclasses it and supplies:

- ``path`` (class attribute or property): the HTTP path clients connect to; ``url`` is built
  from it.
- :meth:`BaseSimulator.check_request`: inspect the HTTP upgrade (path, auth headers) and return
  ``None`` to accept or an :class:`HttpRejection` to refuse it with an HTTP status.
- :meth:`BaseSimulator.new_session`: build the :class:`SessionHandler` that speaks the protocol
  on one accepted :class:`SimConnection`.
- optionally :meth:`BaseSimulator.validate_server_frame` (debug: validate each frame before it
  is sent, against the vendor schema) and :meth:`BaseSimulator.is_audio_frame` (which frames
  ``record=False`` leaves out of ``received`` / ``sent``).

Every frame in both directions is recorded, parsed, on its :class:`SimConnection`; every change
(frame, turn, close) wakes :meth:`BaseSimulator.wait_for` waiters, so tests wait on conditions
instead of sleeping. Each :class:`SimConnection` carries its own
:class:`~providers.simulator.model.SimulatedModel` (``conn.model``).

Frames are processed one at a time per connection, in arrival order; long-running work (a paced
reply) runs in tasks started with :meth:`SimConnection.spawn`, cancelled when the connection
ends.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol.errors import SessionTimeout, UsageError
from providers.transport import NoDebugLogger

from .model import SimScript, SimulatedModel

__all__ = [
    "BaseSimulator",
    "HttpRejection",
    "SessionHandler",
    "SimConnection",
]

logger = logging.getLogger(__name__)
# websockets logs request headers (API keys included) at DEBUG; the simulator never lets it
_WS_LOGGER = NoDebugLogger(logging.getLogger("voicegrid.simulator.websockets"), {})

#: Largest client frame accepted (the OpenAI limit for one audio append is 15 MiB of base64).
MAX_FRAME_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class HttpRejection:
    """Refuse a WebSocket upgrade with ``status`` and a JSON (or text) ``body``."""

    status: int
    body: Mapping[str, Any] | str

    def to_response(self) -> Response:
        if isinstance(self.body, str):
            payload, content_type = self.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = orjson.dumps(dict(self.body)), "application/json"
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(payload))),
                ("Connection", "close"),
            ]
        )
        return Response(self.status, HTTPStatus(self.status).phrase, headers, payload)


class SimConnection:
    """One client connection: what it sent, what it was sent, and its simulated model.

    ``received`` / ``sent`` hold every frame parsed from JSON in order (a client frame that is
    not a JSON object is recorded as ``{"_raw": <text>}``). ``audio_in`` is all input audio the
    front-end decoded (PCM16 at the session's input rate), in order.
    """

    def __init__(
        self,
        simulator: BaseSimulator,
        ws: ServerConnection | None,
        request: Request,
        index: int,
        http_status: int = 101,
    ) -> None:
        self.simulator = simulator
        self.ws = ws
        self.index = index
        self.http_status = http_status
        self.request_headers: dict[str, str] = {
            k.lower(): v for k, v in request.headers.raw_items()
        }
        split = urlsplit(request.path)
        self.path = split.path
        self.query: dict[str, str] = dict(parse_qsl(split.query, keep_blank_values=True))
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.closed = ws is None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.opened_at = time.monotonic()
        self.model = SimulatedModel(simulator.script)
        #: the protocol handler serving this connection (set once accepted)
        self.session: SessionHandler | None = None
        self._audio_in = bytearray()
        self._audio_in_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = f"closed code={self.close_code}" if self.closed else "open"
        return f"<SimConnection #{self.index} {self.path} {state}>"

    @property
    def audio_in(self) -> bytes:
        """All decoded input audio of this connection (empty when the simulator has
        ``record=False``)."""
        return bytes(self._audio_in)

    @property
    def audio_in_bytes(self) -> int:
        """Byte count of decoded input audio, kept even when audio is not recorded."""
        return self._audio_in_bytes

    def add_audio_in(self, pcm: bytes) -> None:
        """Record decoded input audio (front-ends call this for every input chunk)."""
        self._audio_in_bytes += len(pcm)
        if self.simulator.record:
            self._audio_in += pcm

    def record_received(self, frame: dict[str, Any]) -> None:
        if self.simulator.record or not self.simulator.is_audio_frame(frame, outgoing=False):
            self.received.append(frame)
        self.simulator.notify()

    async def send_json(self, frame: dict[str, Any], *, binary: bool = False) -> bool:
        """Send one JSON frame (text, or binary UTF-8 JSON when ``binary``) and record it.

        ``frame`` must not be mutated afterwards: the recorded copy is the same object. Returns
        False when the connection is already closed (the frame is then dropped, not recorded).
        """
        if self.ws is None or self.closed:
            return False
        sim = self.simulator
        if sim.validate:
            try:
                sim.validate_server_frame(frame)
            except Exception as exc:  # record every schema violation, keep serving
                sim.validation_errors.append(f"{frame.get('type', frame)!s:.80}: {exc}")
                logger.error("simulator sent an invalid frame: %s", exc)
        data = orjson.dumps(frame)
        try:
            await self.ws.send(data if binary else data.decode())
        except ConnectionClosed:
            return False
        if sim.record or not sim.is_audio_frame(frame, outgoing=True):
            self.sent.append(frame)
        sim.notify()
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame carrying ``code`` and ``reason``."""
        if self.ws is not None and not self.closed:
            await self.ws.close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        if self.ws is not None and not self.closed:
            self.ws.transport.abort()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        """Run ``coro`` as a task owned by this connection (cancelled when it closes).

        An exception escaping the task is logged and recorded in ``simulator.internal_errors``.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.simulator._internal_error(self, task.exception())

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class SessionHandler(abc.ABC):
    """The protocol spoken on one connection; a front-end implements one per provider."""

    def __init__(self, simulator: BaseSimulator, conn: SimConnection) -> None:
        self.simulator = simulator
        self.conn = conn

    async def on_open(self) -> None:  # noqa: B027 - optional hook
        """Called once after the upgrade, before any client frame (e.g. send a greeting)."""

    @abc.abstractmethod
    async def on_message(self, raw: str | bytes, frame: dict[str, Any] | None) -> None:
        """Handle one client frame; ``frame`` is the parsed JSON object or None if it is not one."""

    async def on_close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the connection has ended (any reason)."""


class BaseSimulator(abc.ABC):
    """A loopback server speaking one provider's protocol with a scripted model.

    Use as ``async with Simulator(script) as sim``. ``record=False`` keeps audio frames out of
    ``received`` / ``sent`` and input audio out of ``audio_in`` (load tests: memory stays flat).
    ``validate=True`` validates every server frame against the vendor schema before sending
    (needs the vendor SDK; violations land in ``validation_errors``).
    """

    path: str = "/"

    def __init__(
        self,
        script: SimScript | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        validate: bool = False,
    ) -> None:
        self.script = script if script is not None else SimScript()
        self.host = host
        self.port = port
        self.record = record
        self.validate = validate
        self.connections: list[SimConnection] = []
        #: upgrade requests refused by :meth:`check_request` (``http_status`` says how)
        self.rejected: list[SimConnection] = []
        #: schema violations found by ``validate=True`` (empty when every frame was valid)
        self.validation_errors: list[str] = []
        #: unexpected exceptions inside the simulator (a bug; tests assert it stays empty)
        self.internal_errors: list[str] = []
        self._server: Server | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._refusal: HttpRejection | None = None

    # ---- front-end hooks -------------------------------------------------------------------

    def check_request(self, request: Request) -> HttpRejection | None:
        """Accept (None) or refuse the HTTP upgrade; default: only :attr:`path`."""
        if urlsplit(request.path).path != self.path:
            return HttpRejection(404, {"error": {"message": f"no route for {request.path}"}})
        return None

    @abc.abstractmethod
    def new_session(self, conn: SimConnection) -> SessionHandler:
        """The protocol handler for a freshly accepted connection."""

    def validate_server_frame(self, frame: dict[str, Any]) -> None:  # noqa: B027
        """Raise if ``frame`` violates the vendor schema (used when ``validate=True``)."""

    def is_audio_frame(self, frame: dict[str, Any], *, outgoing: bool) -> bool:
        """True for bulk audio frames, which ``record=False`` does not keep."""
        return False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start listening; ``port=0`` picks a free port (read it from :attr:`port`)."""
        if self._server is not None:
            return self
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # base64 audio barely compresses; deflate would cost CPU per frame
            max_size=MAX_FRAME_BYTES,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            logger=_WS_LOGGER,
        )
        sockets = list(self._server.sockets)
        self.port = int(sockets[0].getsockname()[1])
        logger.info("%s listening on %s", type(self).__name__, self.url)
        return self

    async def stop(self) -> None:
        """Close every connection (1001 going away) and stop listening."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        handlers = list(self._handlers)
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        self.notify()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``ws://HOST:PORT<path>``: the endpoint clients connect to."""
        if self._server is None:
            raise UsageError("the simulator is not started; use 'async with' or await start()")
        return f"ws://{self.host}:{self.port}{self.path}"

    # ---- test API ------------------------------------------------------------------------------

    @property
    def live_connections(self) -> list[SimConnection]:
        return [conn for conn in self.connections if not conn.closed]

    @property
    def audio_in(self) -> bytes:
        """Decoded input audio over all connections, in accept order."""
        return b"".join(conn.audio_in for conn in self.connections)

    @property
    def turns(self) -> int:
        """User turns detected from audio so far, over all connections."""
        return sum(conn.model.turns for conn in self.connections)

    async def drop(
        self, code: int | None = 1011, reason: str = "simulated connection drop"
    ) -> None:
        """Close every live connection with ``code`` / ``reason``; ``code=None`` aborts the TCP
        connection without a close frame (the client sees 1006)."""
        conns = self.live_connections
        for conn in conns:
            if code is None:
                conn.abort()
            else:
                await conn.close(code, reason)
        await self.wait_for(lambda sim: all(conn.closed for conn in conns), timeout=10)

    async def wait_for(
        self,
        predicate: Callable[[Self], object],
        timeout: float = 5.0,  # noqa: ASYNC109 - the pinned test API takes a timeout
    ) -> None:
        """Return once ``predicate(self)`` is true; raise ``SessionTimeout`` after ``timeout`` s.

        The predicate is evaluated after every recorded frame, turn and close.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SessionTimeout(
                    f"simulator condition not met within {timeout} s; connections: "
                    f"{self.connections!r}"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def notify(self) -> None:
        """Wake :meth:`wait_for` waiters (called on every recorded change)."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- internals -----------------------------------------------------------------------------

    def refuse(self, status: int | None = 503, message: str = "Service unavailable.") -> None:
        """Refuse every new connection's upgrade with HTTP ``status`` (e.g. 503 for an outage,
        429 for a rate limit) and an OpenAI/Google-style JSON error body; ``None`` accepts
        again. Live connections are not touched (``drop`` them to simulate a full outage)."""
        self._refusal = (
            None
            if status is None
            else HttpRejection(status, {"error": {"code": status, "message": message}})
        )

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        rejection = self._refusal or self.check_request(request)
        if rejection is None:
            return None
        conn = SimConnection(self, None, request, len(self.rejected), http_status=rejection.status)
        self.rejected.append(conn)
        self.notify()
        return rejection.to_response()

    async def _handle(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        assert ws.request is not None  # set once the handshake succeeded
        conn = SimConnection(self, ws, ws.request, len(self.connections))
        self.connections.append(conn)
        self.notify()
        session = conn.session = self.new_session(conn)
        try:
            await session.on_open()
            async for raw in ws:
                frame = self._parse(raw)
                conn.record_received(frame if frame is not None else {"_raw": _text(raw)})
                try:
                    await session.on_message(raw, frame)
                except ConnectionClosed:
                    raise
                except Exception as exc:
                    self._internal_error(conn, exc)
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._internal_error(conn, exc)
            with contextlib.suppress(Exception):
                await ws.close(1011, "simulator internal error")
        finally:
            conn.closed = True
            conn.close_code = ws.close_code if ws.close_code is not None else 1006
            conn.close_reason = ws.close_reason or ""
            await conn._cancel_tasks()
            with contextlib.suppress(Exception):
                await session.on_close()
            self.notify()
            if task is not None:
                self._handlers.discard(task)

    @staticmethod
    def _parse(raw: str | bytes) -> dict[str, Any] | None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    def _internal_error(self, conn: SimConnection, exc: BaseException | None) -> None:
        logger.error("simulator error on %r: %r", conn, exc, exc_info=exc)
        self.internal_errors.append(f"{conn!r}: {exc!r}")
        self.notify()


def _text(raw: str | bytes) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
