"""A phone call through the Telnyx media leg (fake Telnyx written from its documented frames),
and the gateway's media-token endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ingress import mint_media_token
from protocol import DtmfEvent, InterruptedEvent

from ...support.timing import eventually, scaled
from .phones import FRAME, FakeTelnyx, open_stream, tone_mulaw
from .test_twilio import PHONE_CONFIG, SECRET, Call

__all__ = ["call"]


@pytest.fixture
async def call(
    start_worker: Any, start_gateway: Any, make_client: Any, recorder: Any, fakes: Any
) -> Any:
    await start_worker()
    gw = await start_gateway(media_token_secret=SECRET, gateway_token="service-token")
    backend = make_client(tag="phone")
    events = recorder(backend)
    await backend.connect(PHONE_CONFIG)
    yield Call(gw, backend, events, fakes["phone"][0])
    await backend.disconnect()


def _url(call: Call, token: str) -> str:
    return f"{call.gateway.base}/v1/media/telnyx?token={token}"


async def test_a_telnyx_call_end_to_end(call: Call) -> None:
    reports: list[tuple[str | None, int]] = []
    call.provider.report_playback = lambda rid, ms: reports.append((rid, ms))
    phone: FakeTelnyx = await open_stream(_url(call, call.token()), FakeTelnyx)
    await phone.start("PCMU")

    # media frames arrive out of order (Telnyx does not guarantee it): the leg reorders them
    bodies = [phone.media_body(tone_mulaw(i)) for i in range(10)]
    bodies[3], bodies[4] = bodies[4], bodies[3]
    for body in bodies:
        await phone.send_body(body)
    await eventually(lambda: len(call.provider.frames) == 10)
    assert call.provider.frames == [tone_mulaw(i) for i in range(10)]

    await phone.wait_for(lambda: len(phone.of("media")) >= 10)
    assert all(len(p) == FRAME for p in phone.media_payloads())
    assert b"".join(phone.media_payloads()[:10]) == b"".join(tone_mulaw(i) for i in range(10))
    assert set(phone.of("media")[0]) == {"event", "media"}  # no stream id on frames to Telnyx
    await eventually(lambda: bool(reports))

    call.provider.emit("interrupted", InterruptedEvent(response_id="r1"))
    await phone.wait_for(lambda: bool(phone.of("clear")))
    assert phone.of("clear")[0] == {"event": "clear"}

    await phone.dtmf("#")
    await call.events.wait_for(lambda: call.events.of("dtmf"))
    assert call.events.of("dtmf") == [DtmfEvent(digit="#")]
    await phone.stop()
    await phone.closed.wait()
    assert phone.close_code == 1000 and call.backend.connected


async def test_l16_is_big_endian_on_the_wire(
    start_worker: Any, start_gateway: Any, make_client: Any, fakes: Any
) -> None:
    await start_worker()
    gw = await start_gateway(media_token_secret=SECRET)
    backend = make_client(tag="l16")
    pcm = {"encoding": "pcm16", "sample_rate": 16000}
    await backend.connect({"input_audio": pcm, "output_audio": pcm})
    token = mint_media_token(SECRET, str(backend.session_id))
    phone: FakeTelnyx = await open_stream(f"{gw.base}/v1/media/telnyx?token={token}", FakeTelnyx)
    await phone.start("L16", 16000)
    samples = np.arange(320, dtype=np.int16) * 50
    await phone.media(samples.astype(">i2").tobytes())
    await eventually(lambda: len(fakes["l16"][0].frames) == 1)
    assert fakes["l16"][0].frames[0] == samples.astype("<i2").tobytes()
    await phone.wait_for(lambda: bool(phone.of("media")))
    assert phone.media_payloads()[0] == samples.astype(">i2").tobytes()
    await phone.close()
    await backend.disconnect()


async def test_unsupported_codecs_are_refused_by_name(call: Call) -> None:
    phone: FakeTelnyx = await open_stream(_url(call, call.token()), FakeTelnyx)
    await phone.start("OPUS", 16000)
    await phone.closed.wait()
    assert phone.close_code == 1008 and "OPUS" in phone.close_reason


async def test_bad_tokens_are_refused_on_the_upgrade(call: Call) -> None:
    for token in ("", "vgm1.bad.token", mint_media_token("y" * 40, call.session_id)):
        with pytest.raises(InvalidStatus) as refused:
            await connect(_url(call, token), open_timeout=scaled(5))
        assert refused.value.response.status_code == 401
        assert token.encode() not in refused.value.response.body or not token
    token = call.token()
    ws = await connect(_url(call, token), open_timeout=scaled(5))
    await ws.close()
    with pytest.raises(InvalidStatus) as reused:
        await connect(_url(call, token), open_timeout=scaled(5))
    assert b"already used" in reused.value.response.body
    assert call.provider.frames == []


async def _post(base: str, path: str, token: str | None) -> tuple[int, bytes]:
    """A bare HTTP/1.1 POST (the gateway's HTTP is websockets', which takes no request body)."""
    host, port = base.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), scaled(5))
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_backend_mints_tokens_at_the_gateway(call: Call) -> None:
    path = f"/v1/sessions/{call.session_id}/media-token"
    status, body = await _post(call.gateway.base, path, "service-token")
    assert status == 200
    reply = orjson.loads(body)
    assert reply["expires_in"] == 60 and reply["session_id"] == call.session_id
    phone: FakeTelnyx = await open_stream(_url(call, reply["token"]), FakeTelnyx)
    await phone.start()
    await phone.media(tone_mulaw(1))
    await eventually(lambda: len(call.provider.frames) == 1)
    await phone.close()

    assert (await _post(call.gateway.base, path, "wrong"))[0] == 401
    assert (await _post(call.gateway.base, path, None))[0] == 401
    status, body = await _post(call.gateway.base, "/v1/sessions/nope/media-token", "service-token")
    assert status == 404 and b"does not exist" in body
    status, body = await _post(call.gateway.base, "/v1/sessions/b$d/media-token", "service-token")
    assert status == 400 and b"b$d" in body
