"""A phone call through the Twilio media leg: fake Twilio -> gateway -> Redis (fakeredis) ->
in-process worker -> fake provider, while the backend holds its own attached client (tool calls,
DTMF) as docs/telephony.md describes."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ingress import mint_media_token
from ingress.media.twilio import twilio_signature
from protocol import DtmfEvent, InterruptedEvent

from ...support.timing import eventually, scaled
from .phones import FRAME, FakeTwilio, open_stream, tone_mulaw

SECRET = "s" * 40
PHONE_CONFIG = {
    "input_audio": {"encoding": "mulaw", "sample_rate": 8000},
    "output_audio": {"encoding": "mulaw", "sample_rate": 8000},
}


@dataclasses.dataclass
class Call:
    gateway: Any
    backend: Any
    events: Any
    provider: Any

    @property
    def session_id(self) -> str:
        return str(self.backend.session_id)

    def token(self, **kwargs: Any) -> str:
        return mint_media_token(SECRET, self.session_id, **kwargs)

    async def twilio(self, **kwargs: Any) -> FakeTwilio:
        phone: FakeTwilio = await open_stream(
            f"{self.gateway.base}/v1/media/twilio", FakeTwilio, **kwargs
        )
        return phone


@pytest.fixture
async def call(
    start_worker: Any, start_gateway: Any, make_client: Any, recorder: Any, fakes: Any
) -> Any:
    """A live session created by the backend (mu-law 8 kHz both ways; the fake provider echoes)
    and a gateway with media tokens enabled."""
    await start_worker()
    gw = await start_gateway(media_token_secret=SECRET)
    backend = make_client(tag="phone")
    events = recorder(backend)
    await backend.connect(PHONE_CONFIG)
    yield Call(gw, backend, events, fakes["phone"][0])
    await backend.disconnect()


async def test_a_phone_call_mulaw_in_and_20ms_mulaw_out(call: Call) -> None:
    reports: list[tuple[str | None, int]] = []
    call.provider.report_playback = lambda rid, ms: reports.append((rid, ms))
    phone = await call.twilio()
    await phone.start({"token": call.token(), "session": call.session_id})

    sent = [tone_mulaw(i) for i in range(25)]  # 500 ms of speech
    for payload in sent:
        await phone.media(payload)
    await eventually(lambda: len(call.provider.frames) == 25)
    assert call.provider.frames == sent  # mu-law 8 kHz reached the provider unchanged

    # the provider's echo comes back as mu-law in 20 ms payloads, each with the streamSid
    await phone.wait_for(lambda: len(phone.of("media")) >= 25)
    payloads = phone.media_payloads()
    assert all(len(p) == FRAME for p in payloads)
    assert b"".join(payloads[:25]) == b"".join(sent)
    assert {m["streamSid"] for m in phone.received} == {FakeTwilio.stream_sid}
    assert set(phone.of("media")[0]["media"]) == {"payload"}

    # a mark follows every 100 ms of audio; the phone echoes it and the worker hears the position
    marks = phone.of("mark")
    assert len(marks) >= 4 and all(set(m["mark"]) == {"name"} for m in marks)
    await eventually(lambda: bool(reports) and reports[-1][1] >= 400)
    assert reports[0] == ("r1", 100)
    assert [ms for _, ms in reports] == sorted(ms for _, ms in reports)

    # barge-in: the gateway sends 'clear' at once so the caller stops hearing the old reply
    call.provider.emit("interrupted", InterruptedEvent(response_id="r1"))
    await phone.wait_for(lambda: bool(phone.of("clear")))
    assert phone.of("clear")[0] == {"event": "clear", "streamSid": FakeTwilio.stream_sid}

    # DTMF reaches the backend's own client as a 'dtmf' event
    await phone.dtmf("7")
    await call.events.wait_for(lambda: call.events.of("dtmf"))
    assert call.events.of("dtmf") == [DtmfEvent(digit="7")]

    # Twilio stops the stream: the leg closes, the session lives on for the backend
    await phone.stop()
    await phone.closed.wait()
    assert phone.close_code == 1000
    assert call.backend.connected and not call.events.of("closed")


async def test_a_dropped_leg_reattaches_without_ending_the_call(call: Call) -> None:
    first = await call.twilio()
    await first.start({"token": call.token()})
    await first.media(tone_mulaw(1))
    await eventually(lambda: len(call.provider.frames) == 1)
    first.ws.transport.abort()  # the network drops; no stop, no close frame
    await first.closed.wait()

    second = await call.twilio()  # the backend re-issued <Connect><Stream> with a new token
    await second.start({"token": call.token()})
    await second.media(tone_mulaw(2))
    await second.wait_for(lambda: len(second.of("media")) >= 1)
    assert second.media_payloads()[0] == tone_mulaw(2)
    assert call.provider.frames == [tone_mulaw(1), tone_mulaw(2)]
    assert call.backend.connected and not call.events.of("closed")
    await second.close()


async def _refused(call: Call, parameters: dict[str, str]) -> FakeTwilio:
    phone = await call.twilio()
    await phone.start(parameters)
    await phone.media(tone_mulaw(9))
    await phone.closed.wait()
    return phone


async def test_wrong_reused_or_expired_tokens_are_refused_before_any_audio(call: Call) -> None:
    wrong = mint_media_token("x" * 40, call.session_id)
    refused = await _refused(call, {"token": wrong})
    assert (refused.close_code, refused.close_reason) == (
        4401,
        "media token refused: bad_signature",
    )

    expired = call.token(now=time.time() - 120)
    refused = await _refused(call, {"token": expired})
    assert refused.close_reason == "media token refused: expired"

    token = call.token()
    ok = await call.twilio()
    await ok.start({"token": token})
    await ok.media(tone_mulaw(1))
    await eventually(lambda: len(call.provider.frames) == 1)
    await ok.close()
    refused = await _refused(call, {"token": token})  # the same token again
    assert refused.close_reason == "media token refused: used"

    refused = await _refused(call, {})
    assert refused.close_reason == "media token refused: missing"
    other = mint_media_token(SECRET, "some-other-session")
    refused = await _refused(call, {"token": other, "session": call.session_id})
    assert refused.close_reason == "media token refused: wrong_session"
    assert call.provider.frames == [tone_mulaw(1)]  # no refused leg got audio through
    assert refused.of("media") == []


async def test_the_twilio_signature_is_checked_when_an_auth_token_is_set(
    start_worker: Any, start_gateway: Any
) -> None:
    await start_worker()
    gw = await start_gateway(
        media_token_secret=SECRET,
        twilio_auth_token="twilio-auth-token",
        public_url="wss://voice.example.com",
    )
    url = f"{gw.base}/v1/media/twilio"
    with pytest.raises(InvalidStatus) as missing:
        await connect(url, open_timeout=scaled(5))
    assert missing.value.response.status_code == 403
    wrong = twilio_signature("another-token", "wss://voice.example.com/v1/media/twilio")
    with pytest.raises(InvalidStatus):
        await connect(url, additional_headers={"X-Twilio-Signature": wrong})
    good = twilio_signature("twilio-auth-token", "wss://voice.example.com/v1/media/twilio")
    ws = await connect(url, additional_headers={"X-Twilio-Signature": good})
    await ws.close()


def test_twilio_signature_matches_the_documented_algorithm() -> None:
    # HMAC-SHA1 of the URL then the sorted POST parameters, base64 (here computed by hand)
    import base64
    import hashlib
    import hmac

    url = "https://example.com/voice?x=1"
    params = {"To": "+15551234567", "CallSid": "CA1"}
    expected = base64.b64encode(
        hmac.new(b"tok", (url + "CallSidCA1To+15551234567").encode(), hashlib.sha1).digest()
    ).decode()
    assert twilio_signature("tok", url, params) == expected


async def test_media_legs_refuse_when_no_secret_is_configured(
    start_worker: Any, start_gateway: Any
) -> None:
    gw = await start_gateway()
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{gw.base}/v1/media/twilio", open_timeout=scaled(5))
    assert refused.value.response.status_code == 503
    assert b"VOICEGRID_MEDIA_TOKEN_SECRET" in refused.value.response.body


async def test_latency_added_by_the_phone_leg(call: Call) -> None:
    """Mouth-to-ear cost of the gateway leg, measured at the fakes: Twilio media sent -> the
    provider client has the frame (in), provider audio emitted -> Twilio media received (out).
    Paced like a phone (20 ms); 250 frames (5 s). Printed; bounded loosely (shared CI cores)."""
    arrived: dict[bytes, float] = {}
    original = call.provider.send_audio

    def timed(frame: bytes) -> None:
        arrived[bytes(frame)] = time.perf_counter()
        original(frame)  # the echo is emitted here, so this is also the 'provider out' time

    call.provider.send_audio = timed
    phone = await call.twilio(echo_marks=False)
    await phone.start({"token": call.token()})
    sent_at: dict[bytes, float] = {}
    for i in range(250):
        payload = tone_mulaw(i)
        sent_at[payload] = time.perf_counter()
        await phone.media(payload)
        await asyncio.sleep(0.02)
    await phone.wait_for(lambda: len(phone.of("media")) >= 250, within=15)
    received = dict(
        zip(
            phone.media_payloads(),
            [
                t
                for m, t in zip(phone.received, phone.received_at, strict=True)
                if m["event"] == "media"
            ],
            strict=False,
        )
    )
    inbound = sorted((arrived[p] - sent_at[p]) * 1000 for p in sent_at)
    outbound = sorted((received[p] - arrived[p]) * 1000 for p in sent_at if p in received)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    print(
        f"\nphone leg latency over {len(inbound)} frames: in p50 {pct(inbound, 0.5):.1f} ms "
        f"p99 {pct(inbound, 0.99):.1f} ms; out p50 {pct(outbound, 0.5):.1f} ms "
        f"p99 {pct(outbound, 0.99):.1f} ms"
    )
    assert pct(inbound, 0.5) < scaled(100) and pct(outbound, 0.5) < scaled(100)
    await phone.close()
