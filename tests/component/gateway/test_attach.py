"""Reconnect and attach: a caller whose socket dropped continues its session on any gateway
replica from its resume position, with no event lost or duplicated."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ingress.gateway import CLOSE_ATTACHED_ELSEWHERE, CLOSE_SESSION_NOT_FOUND

from ...support.timing import eventually
from .conftest import frame

FRAMES = 120
DROP_AT = 73  # between two audio.marks (50 and 100): the position needs after= and skip=


@pytest.mark.parametrize("same_gateway", [False, True], ids=["other-replica", "same-replica"])
async def test_a_dropped_caller_attaches_and_misses_nothing(
    start_worker: Any, start_gateway: Any, open_caller: Any, fakes: Any, same_gateway: bool
) -> None:
    await start_worker()
    first = await start_gateway()
    second = first if same_gateway else await start_gateway()
    caller = await open_caller(first.url, drop_after_audio=DROP_AT)
    started = await caller.start(options={"tag": "drop"})
    sid = started["session_id"]
    for i in range(FRAMES):
        await caller.send_raw(frame(i))
    # the caller hears DROP_AT frames; the rest are lost in flight when the network drops
    await eventually(lambda: len(fakes["drop"][0].frames) == FRAMES and caller.deaf)
    await caller.cut()
    assert len(caller.audio) == DROP_AT
    assert caller.skip == DROP_AT - 50 and caller.after == caller.of("audio.mark")[0]["event_id"]

    again = await open_caller(f"{second.url}/{sid}{caller.attach_query}")
    await again.wait_for(lambda: bool(again.of("session.attached")))
    attached = again.of("session.attached")[0]
    assert attached["session_id"] == sid and attached["provider"] == "fake"
    assert (attached["after"], attached["skip"]) == (caller.after, caller.skip)
    await again.wait_for(lambda: len(again.audio) == FRAMES - DROP_AT)
    for i in range(FRAMES, FRAMES + 30):
        await again.send_raw(frame(i))
    await again.wait_for(lambda: len(again.audio) == FRAMES + 30 - DROP_AT)

    # every model frame exactly once, in order, across both sockets
    assert caller.audio + again.audio == [frame(i) for i in range(FRAMES + 30)]
    assert fakes["drop"][0].frames == [frame(i) for i in range(FRAMES + 30)]
    assert len(fakes["drop"]) == 1 and not fakes["drop"][0].disconnected  # the session lived on
    assert not again.of("connected")  # delivered once, to the first socket
    # the new socket announces audio afresh: its caller has no audio.meta yet
    assert again.types[1] == "audio.meta"

    await again.send({"type": "session.end"})
    assert await again.wait_closed() == (1000, "session ended")


async def test_an_attach_after_a_long_gap_gets_the_whole_backlog(
    start_worker: Any, start_gateway: Any, open_caller: Any, fakes: Any
) -> None:
    await start_worker()
    gw = await start_gateway()  # the default outbound budget
    caller = await open_caller(gw.url, drop_after_audio=5)
    sid = (await caller.start(options={"tag": "gap"}))["session_id"]
    # about 9 s of model audio pile up while the caller is away; sent in 1 s bursts, because
    # the ingress buffers at most INGRESS_BUFFER_S (5 s) of caller audio ahead of Redis
    for burst in range(9):
        for i in range(burst * 50, burst * 50 + 50):
            await caller.send_raw(frame(i))
        await eventually(lambda n=burst: len(fakes["gap"][0].frames) == n * 50 + 50)
    await caller.cut()
    again = await open_caller(f"{gw.url}/{sid}{caller.attach_query}")
    await again.wait_for(lambda: len(again.audio) == 445, within=10)
    assert caller.audio + again.audio == [frame(i) for i in range(450)]
    assert not again.closed.is_set()


async def test_text_events_are_not_repeated_after_attach(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    sid = (await caller.start())["session_id"]
    await caller.send({"type": "response.request", "instruction": "call a tool"})
    await caller.wait_for(lambda: bool(caller.of("tool-call")))
    position = caller.attach_query
    await caller.close()

    again = await open_caller(f"{gw.url}/{sid}{position}")
    await again.send({"type": "tool.response", "responses": [{"call_id": "call-1", "output": 1}]})
    await again.wait_for(lambda: bool(again.of("response-done")))
    assert again.types[0] == "session.attached"
    assert not again.of("tool-call") and not again.of("connected")
    assert [t["text"] for t in again.of("transcript")] == ["result 1"]


async def test_a_newer_socket_supersedes_a_stale_one_on_the_same_gateway(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    sid = (await caller.start())["session_id"]
    await caller.send_raw(frame(1))
    await caller.wait_for(lambda: len(caller.audio) == 1)

    again = await open_caller(f"{gw.url}/{sid}{caller.attach_query}")
    code, reason = await caller.wait_closed()
    assert (code, reason) == (CLOSE_ATTACHED_ELSEWHERE, "attached by a newer connection")
    await again.wait_for(lambda: bool(again.of("session.attached")))
    await again.send_raw(frame(2))
    await again.wait_for(lambda: len(again.audio) == 1)
    assert again.audio == [frame(2)]


async def test_attach_to_unknown_or_ended_sessions_and_bad_positions_fail_clearly(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    missing = await open_caller(f"{gw.url}/no-such-session")
    assert await missing.wait_closed() == (CLOSE_SESSION_NOT_FOUND, "session not found or ended")
    error = missing.of("error")[0]
    assert error["code"] == "not_connected" and "does not exist" in error["message"]
    assert error["recoverable"] is False

    caller = await open_caller(gw.url)
    sid = (await caller.start())["session_id"]
    await caller.send({"type": "session.end"})
    await caller.wait_closed()
    ended = await open_caller(f"{gw.url}/{sid}")
    assert (await ended.wait_closed())[0] == CLOSE_SESSION_NOT_FOUND
    assert "has ended" in ended.of("error")[0]["message"]

    for query, problem in (
        ("?after=yesterday", b"not an event id"),
        ("?skip=3", b"skip needs after"),
        ("?after=1-0&skip=-1", b"whole number"),
        ("?cursor=1-0", b"unexpected query parameters"),
    ):
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{gw.url}/{sid}{query}")
        assert info.value.response.status_code == 400
        assert problem in info.value.response.body
    with pytest.raises(InvalidStatus) as info:
        await connect(f"{gw.url}/bad%20id")
    assert info.value.response.status_code == 400
