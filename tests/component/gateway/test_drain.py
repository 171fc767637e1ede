"""Drain and back-pressure: SIGTERM (stop) closes callers with 1012 and keeps their sessions for an
attach elsewhere; a caller that stops reading is cut off with 1008 instead of growing memory."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ...support.prometheus import registry_value
from ...support.timing import scaled
from .conftest import frame


async def test_stop_closes_callers_with_1012_and_they_continue_elsewhere(
    start_worker: Any, start_gateway: Any, open_caller: Any, fakes: Any
) -> None:
    await start_worker()
    leaving = await start_gateway()
    staying = await start_gateway()
    callers = [await open_caller(leaving.url) for _ in range(3)]
    for n, caller in enumerate(callers):
        await caller.start(options={"tag": f"c{n}"})
        await caller.send_raw(frame(n))
        await caller.wait_for(lambda c=caller: len(c.audio) == 1)  # type: ignore[misc]
    assert leaving.http_status("/readyz")[0] == 200

    await leaving.stop()
    for caller in callers:
        assert await caller.wait_closed() == (1012, "service restart")
    assert leaving.http_status("/readyz") == (503, b"draining\n")
    assert registry_value("voicegrid_gateway_connections") == 0
    with pytest.raises((OSError, InvalidStatus)):
        await connect(leaving.url, open_timeout=scaled(2))

    for n, caller in enumerate(callers):
        sid = caller.of("session.started")[0]["session_id"]
        again = await open_caller(f"{staying.url}/{sid}{caller.attach_query}")
        await again.send_raw(frame(100 + n))
        await again.wait_for(lambda a=again: len(a.audio) == 1)  # type: ignore[misc]
        assert again.audio == [frame(100 + n)]  # nothing repeated, the session went on
        assert fakes[f"c{n}"][0].frames == [frame(n), frame(100 + n)]
        assert not fakes[f"c{n}"][0].disconnected


async def test_a_caller_that_does_not_read_is_closed_with_1008(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway(outbound_budget_bytes=64 * 1024)
    before = registry_value("voicegrid_gateway_rejected_total", reason="slow_consumer")
    # a caller with a tiny receive window that reads nothing once the session started
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
    sock.connect(("127.0.0.1", gw.gateway.port))
    ws = await connect(gw.url, sock=sock, max_queue=1, compression=None)
    await ws.send('{"type": "session.start", "provider": "fake", "model": "m"}')
    assert '"session.started"' in str(await ws.recv())
    second = b"\x00" * 48_000  # 1 s of 24 kHz PCM16, echoed back by the fake provider

    def rejected() -> float:
        return registry_value("voicegrid_gateway_rejected_total", reason="slow_consumer") - before

    async with asyncio.timeout(scaled(20)):
        sent = 0
        while not rejected():
            await ws.send(second)
            sent += 1
            await asyncio.sleep(0.01)
    assert rejected() == 1
    assert sent * len(second) < 8 * 1024 * 1024  # the budget, not memory, ended it
    with pytest.raises(ConnectionClosed):
        while True:  # now read what was delivered, up to the close frame
            await asyncio.wait_for(ws.recv(), scaled(10))
    assert ws.close_code == 1008 and "not reading" in (ws.close_reason or "")
    await open_caller(gw.url)  # the gateway is fine
