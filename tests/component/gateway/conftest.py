"""Fixtures for the gateway component tests: :class:`Caller`, a WebSocket caller that keeps its
resume position exactly as ``docs/gateway.md`` tells callers to, and test frames. Workers,
gateways and the fake provider are ``tests/component/conftest.py``'s fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ...support.timing import scaled

#: A caller frame: 20 ms of 24 kHz PCM16 whose content says which frame it is.
FRAME_BYTES = 960


def frame(i: int) -> bytes:
    """The ``i``-th test frame (distinct content, so order and duplicates are visible)."""
    return i.to_bytes(4, "little") * (FRAME_BYTES // 4)


class Caller:
    """A caller on the gateway: records every message and tracks its resume position.

    The position follows docs/gateway.md: ``after`` is the ``event_id`` of the last text message
    that carried one, ``skip`` the binary (audio) messages received since. ``drop_after_audio``
    simulates a network drop: after that many audio frames nothing more is received (as if lost
    in flight) until :meth:`cut` drops the socket without a close frame.
    """

    def __init__(self, ws: ClientConnection, *, drop_after_audio: int | None = None) -> None:
        self.ws = ws
        self.texts: list[dict[str, Any]] = []
        self.audio: list[bytes] = []
        self.after: str | None = None
        self.skip = 0
        self.drop_after_audio = drop_after_audio
        self.deaf = False
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if not self.deaf:
                    self.deaf = self._record(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._changed.set()

    def _record(self, message: str | bytes) -> bool:
        if isinstance(message, bytes):
            self.audio.append(message)
            self.skip += 1
        else:
            body = orjson.loads(message)
            self.texts.append(body)
            if "event_id" in body:
                self.after = body["event_id"]
                self.skip = 0
        self._changed.set()
        return self.drop_after_audio is not None and len(self.audio) >= self.drop_after_audio

    # --- reading -------------------------------------------------------------------------------

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [t for t in self.texts if t["type"] == kind]

    @property
    def types(self) -> list[str]:
        return [t["type"] for t in self.texts]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(scaled(within)):
            while not predicate():
                self._changed.clear()
                if self.closed.is_set() and not predicate():
                    raise AssertionError(f"socket closed; received {self.types}")
                await self._changed.wait()

    async def reply(self, message_id: str, within: float = 5.0) -> dict[str, Any]:
        """The gateway's answer (ack, error or pong) to the message with ``id``."""
        await self.wait_for(lambda: any(t.get("id") == message_id for t in self.texts), within)
        return next(t for t in self.texts if t.get("id") == message_id)

    async def wait_closed(self, within: float = 10.0) -> tuple[int | None, str | None]:
        async with asyncio.timeout(scaled(within)):
            await self.closed.wait()
        return self.ws.close_code, self.ws.close_reason

    async def cut(self) -> None:
        """The network drops: no close frame, whatever is in flight is lost."""
        self.ws.transport.abort()
        await self.wait_closed()

    @property
    def attach_query(self) -> str:
        return f"?after={self.after}&skip={self.skip}"

    # --- sending -------------------------------------------------------------------------------

    async def send(self, body: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(body).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def start(self, **fields: Any) -> dict[str, Any]:
        fields.setdefault("provider", "fake")
        fields.setdefault("model", "fake-model")
        errors = len(self.of("error"))
        await self.send({"type": "session.start", **fields})
        await self.wait_for(
            lambda: bool(self.of("session.started")) or len(self.of("error")) > errors
        )
        started = self.of("session.started")
        assert started, f"session.start failed: {self.of('error')[errors:]}"
        return started[0]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest.fixture
async def open_caller() -> AsyncIterator[Callable[..., Awaitable[Caller]]]:
    callers: list[Caller] = []

    async def open_(url: str, *, headers: dict[str, str] | None = None, **kw: Any) -> Caller:
        ws = await connect(
            url, additional_headers=headers, compression=None, open_timeout=scaled(5)
        )
        caller = Caller(ws, **kw)
        callers.append(caller)
        return caller

    yield open_
    for caller in callers:
        with contextlib.suppress(Exception):
            await caller.close()
