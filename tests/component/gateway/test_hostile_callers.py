"""The gateway under hostile or buggy callers: no caller harms another, or the gateway.

Each case is one the issue found: an attach position Redis rejects stalled every session on the
gateway; a refused ``session.start`` with a live session's id closed that session; callers steered
the workers' provider connection through ``options``; a socket that pinged stayed forever without
a session; ``skip=%C2%B2`` was an HTTP 500; two ``session.end`` were acknowledged out of order and
the socket closed without ``closed``; a 10 KB ``id`` was echoed back whole; a full or draining
gateway answered 503 before it checked the token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import frame

TOKEN = "gw-hostile-token-456"


async def _status(url: str, **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=5, **kw)
    return int(info.value.response.status_code)


@pytest.mark.parametrize(
    "query",
    [
        "after=99999999999999999999-0",
        "after=%D9%A1-%D9%A1",
        "after=1-0&skip=%C2%B2",
        "after=18446744073709551616-0",
    ],
)
async def test_attach_positions_redis_would_reject_are_refused_with_400(
    start_worker: Any, start_gateway: Any, open_caller: Any, query: str
) -> None:
    await start_worker()
    gw = await start_gateway()
    other = await open_caller(gw.url)
    sid = (await other.start(options={"tag": "neighbour"}))["session_id"]
    assert await _status(f"{gw.url}/{sid}?{query}") == 400
    await other.send_raw(frame(1))  # the gateway's shared read still serves everyone
    await other.wait_for(lambda: other.audio == [frame(1)])


async def test_a_refused_start_never_touches_the_session_it_collided_with(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    owner = await open_caller(gw.url)
    sid = (await owner.start(options={"tag": "own"}, session_id="mine-1"))["session_id"]
    retry = await open_caller(gw.url)  # e.g. the owner retrying after a dropped socket
    await retry.send(
        {"type": "session.start", "provider": "fake", "model": "m", "session_id": sid, "id": 2}
    )
    refused = await retry.reply(2)
    assert refused["type"] == "error" and "already exists" in refused["message"]
    await owner.send({"type": "ping", "id": "p"})
    assert (await owner.reply("p"))["alive"] is True
    await owner.send_raw(frame(2))
    await owner.wait_for(lambda: owner.audio == [frame(2)])


async def test_callers_cannot_steer_the_provider_connection(
    start_worker: Any, start_gateway: Any, open_caller: Any, fakes: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    for n, options in enumerate(
        [{"recycle_after_s": 0.01}, {"reconnect_attempts": 1e9}, {"tag": "x" * 10_000}]
    ):
        await caller.send(
            {"type": "session.start", "provider": "fake", "model": "m", "options": options, "id": n}
        )
        refused = await caller.reply(n)
        assert refused["code"] == "invalid_config", refused
        assert "VOICEGRID_CALLER_OPTIONS" in refused["message"]
    assert "x" not in fakes  # no provider client was ever made
    await caller.start(options={"tag": "allowed"})  # within the allow-list


async def test_the_start_deadline_is_absolute_even_for_a_pinging_socket(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway(start_timeout_s=1.0)
    caller = await open_caller(gw.url)
    opened = time.monotonic()
    while not caller.closed.is_set() and time.monotonic() - opened < 5:
        await caller.send({"type": "ping"})  # answered with an error, but it is traffic
        await asyncio.sleep(0.2)
    code, reason = await caller.wait_closed()
    assert code == 1008 and "session.start" in (reason or "")
    assert time.monotonic() - opened < 2.0


async def test_two_session_ends_are_both_acknowledged_after_closed(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.start(options={"tag": "ends"})
    await caller.send({"type": "session.end", "id": 1})
    await caller.send({"type": "session.end", "id": 2})
    code, _ = await caller.wait_closed()
    assert code == 1000
    tail = [(t["type"], t.get("id")) for t in caller.texts if t["type"] in ("closed", "ack")]
    assert tail == [("closed", None), ("ack", 1), ("ack", 2)]


async def test_an_invalid_id_is_not_echoed_back(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.send({"type": "ping", "id": "i" * 10_000})
    await caller.send({"type": "nonsense", "id": "j" * 129})
    await caller.wait_for(lambda: len(caller.of("error")) == 2)
    for error in caller.of("error"):
        assert "id" not in error and len(str(error)) < 1_000


async def test_the_token_is_checked_before_the_gateway_says_full_or_draining(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway(gateway_token=TOKEN, gateway_max_connections=1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    holder = await open_caller(gw.url, headers=auth)
    await holder.start(options={"tag": "full"})
    assert await _status(gw.url) == 401  # full, but a stranger learns nothing about it
    assert await _status(gw.url, additional_headers=auth) == 503
    gw.gateway.draining = True
    assert await _status(gw.url) == 401
    assert await _status(gw.url, additional_headers=auth) == 503
