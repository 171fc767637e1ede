"""What the gateway refuses, and how: HTTP status before the upgrade, an ``error`` message naming
the problem after it (the call goes on), a close code when the caller breaks the rules."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ingress.gateway import MAX_MESSAGE_BYTES, Rejected, parse_caller_message, parse_route

from ...support.prometheus import registry_value
from ...support.timing import scaled
from .conftest import frame

TOKEN = "gw-secret-token-123"


def _rejected(reason: str) -> float:
    return registry_value("voicegrid_gateway_rejected_total", reason=reason)


async def _status(url: str, **kw: Any) -> tuple[int, bytes, dict[str, str]]:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=scaled(5), **kw)
    response = info.value.response
    return response.status_code, response.body or b"", dict(response.headers.raw_items())


async def test_a_token_is_required_when_configured_and_never_logged(
    start_worker: Any,
    start_gateway: Any,
    open_caller: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await start_worker()
    gw = await start_gateway(gateway_token=TOKEN)
    before = _rejected("unauthorized")
    status, _, headers = await _status(gw.url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    for header in (f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"):
        assert (await _status(gw.url, additional_headers={"Authorization": header}))[0] == 401
    assert _rejected("unauthorized") - before == 4

    caller = await open_caller(gw.url, headers={"Authorization": f"Bearer {TOKEN}"})
    await caller.start()
    assert caller.of("session.started")
    # (the test's own websockets client logs what it sends; the gateway's side must not)
    server_side = [r.getMessage() for r in caplog.records if r.name.startswith("voicegrid")]
    assert server_side, "expected the gateway to log the connection"
    assert not [line for line in server_side if TOKEN in line]
    assert not [line for line in server_side if "Authorization" in line]  # no header dumps


async def test_unknown_paths_and_a_full_gateway_are_refused_before_the_upgrade(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway(gateway_max_connections=1)
    base = gw.url.removesuffix("/v1/sessions")
    status, body, _ = await _status(f"{base}/v2/calls")
    assert status == 404 and b"/v1/sessions" in body
    assert (await _status(f"{gw.url}?after=1-0"))[0] == 400  # no position for a new session

    first = await open_caller(gw.url)
    await first.start()
    status, body, headers = await _status(gw.url)
    assert (status, headers["Retry-After"]) == (503, "1") and b"full" in body
    assert gw.http_status("/readyz") == (503, b"full: 1/1 sessions\n")


async def test_malformed_messages_get_an_error_naming_the_problem_and_the_call_goes_on(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.start()
    before = _rejected("invalid_message")
    cases: list[tuple[str, str, str]] = [
        ("{not json", "invalid_json", "not valid JSON"),
        ("[1, 2]", "invalid_message", "JSON object"),
        ('{"type": "dance", "id": "x1"}', "unknown_type", "'dance' is unknown"),
        ('{"type": "tool.response", "id": "x2"}', "invalid_message", "responses: Field required"),
        (
            '{"type": "tool.response", "id": "x3", "responses": [{"output": 1}]}',
            "invalid_message",
            "responses.0.call_id",
        ),
        ('{"type": "ping", "id": "x4", "extra": 1}', "invalid_message", "extra"),
        ('{"type": "ping", "id": true}', "invalid_message", "id"),
        (
            '{"type": "config.update", "id": "x5", "config": {"temperature": 5}}',
            "invalid_config",
            "temperature 5.0 is out of range",
        ),
        (
            '{"type": "session.start", "id": "x6", "provider": "fake", "model": "m"}',
            "already_started",
            "already carries a session",
        ),
    ]
    for text, code, fragment in cases:
        count = len(caller.of("error"))
        await caller.send_raw(text)
        await caller.wait_for(lambda c=count: len(caller.of("error")) > c)  # type: ignore[misc]
        error = caller.of("error")[-1]
        assert (error["code"], error["recoverable"]) == (code, True), (text, error)
        assert fragment in error["message"], (text, error)
        assert "event_id" not in error  # the gateway's own replies are not session events
    assert [e.get("id") for e in caller.of("error")] == [
        None, None, "x1", "x2", "x3", "x4", None, "x5", "x6"
    ]  # fmt: skip
    assert _rejected("invalid_message") - before == 8  # the bad config reached the parser

    await caller.send_raw(frame(7))  # the call goes on
    await caller.wait_for(lambda: caller.audio == [frame(7)])


async def test_odd_oversize_and_empty_audio_frames_are_rejected_clearly(
    start_worker: Any, start_gateway: Any, open_caller: Any, fakes: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    config = {"input_audio": {"encoding": "pcm16", "sample_rate": 16000}}
    await caller.start(config=config, options={"tag": "frames"})
    before = _rejected("invalid_audio")
    for data in (b"\x01\x02\x03", b"\x00" * 32002, b""):
        await caller.send_raw(data)
    await caller.wait_for(lambda: len(caller.of("error")) == 3)
    odd, big, empty = caller.of("error")
    assert odd["code"] == "invalid_audio" and "odd byte count (3)" in odd["message"]
    assert big["code"] == "audio_frame_too_large"
    assert (
        "32002 bytes" in big["message"]
        and "32000 bytes (1 s of pcm16 at 16000 Hz)" in (big["message"])
    )
    assert empty["code"] == "invalid_audio" and "empty" in empty["message"]
    assert _rejected("invalid_audio") - before == 3
    await caller.send_raw(b"\x00" * 32000)  # exactly 1 s is accepted
    await caller.send_raw(frame(1))
    await caller.wait_for(lambda: len(caller.audio) == 2)
    assert fakes["frames"][0].frames == [b"\x00" * 32000, frame(1)]


async def test_a_message_over_the_size_limit_closes_with_1009(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.start()
    await caller.send_raw(b"\x00" * (MAX_MESSAGE_BYTES + 2))
    code, _ = await caller.wait_closed()
    assert code == 1009


async def test_a_socket_without_session_start_is_closed(
    start_worker: Any, start_gateway: Any
) -> None:
    await start_worker()
    gw = await start_gateway(start_timeout_s=scaled(0.2))
    before = _rejected("start_timeout")
    async with connect(gw.url) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(5))
        assert ws.close_code == 1008 and "no session.start" in (ws.close_reason or "")
    assert _rejected("start_timeout") - before == 1


def test_route_and_message_parsing_are_strict() -> None:
    route = parse_route("/v1/sessions/abc?after=1-2&skip=3")
    assert (route.session_id, route.after, route.skip) == ("abc", "1-2", 3)
    assert parse_route("/v1/sessions/").session_id is None
    message = parse_caller_message(
        '{"type": "tool.response", "id": 7, "responses": [{"call_id": "c", "output": [1]}]}'
    )
    assert message.type == "tool.response" and message.id == 7
    with pytest.raises(Rejected, match="not provider options"):
        parse_caller_message(
            '{"type": "session.start", "provider": "p", "model": "m", "options": {"redis": 1}}'
        )
