"""GeminiSimulator on the wire, driven by a raw WebSocket: framing, validation, resumption."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from providers.simulator import SimScript
from providers.simulator.gemini import NO_TRANSPARENT, GeminiSimulator

from ...support.timing import scaled
from .conftest import MODEL, fast_script, tone

SETUP: dict[str, Any] = {"setup": {"model": f"models/{MODEL}", "sessionResumption": {}}}


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    raw = await ws.recv()
    assert isinstance(raw, bytes), "the simulator sends binary frames, like the real service"
    message: dict[str, Any] = json.loads(raw)
    return message


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.fixture
async def sim() -> Any:
    async with GeminiSimulator(fast_script(), validate=True) as sim:
        yield sim
        assert sim.validation_errors == [] and sim.internal_errors == []


async def test_setup_complete_first_then_a_resumable_handle(sim: GeminiSimulator) -> None:
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(SETUP))
        first = await recv_json(ws)
        assert list(first) == ["setupComplete"] and first["setupComplete"]["sessionId"]
        update = (await recv_json(ws))["sessionResumptionUpdate"]
        assert update["resumable"] is True and update["newHandle"]


@pytest.mark.parametrize(
    "frame",
    [
        {"realtimeInput": {"audioStreamEnd": True}},  # anything before setup
        {"setup": {"model": MODEL}},  # not models/<id>
        {"setup": {"model": f"models/{MODEL}", "generationConfig": {"responseModalites": []}}},
        {"setup": {"model": f"models/{MODEL}"}, "clientContent": {}},  # two messages
        {"setup": {"model": f"models/{MODEL}", "sessionResumption": {"handle": "unknown"}}},
    ],
)
async def test_invalid_frames_close_1007(sim: GeminiSimulator, frame: dict[str, Any]) -> None:
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(frame))
        assert await closed_with(ws) == (1007, "Request contains an invalid argument.")


async def test_unknown_model_closes_1008(sim: GeminiSimulator) -> None:
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-missing"}}))
        code, reason = await closed_with(ws)
    assert code == 1008
    assert reason.startswith("models/gemini-missing is not found for API version v1beta")


async def test_snake_case_and_media_chunks_are_accepted(sim: GeminiSimulator) -> None:
    audio = tone(400) + b"\x00\x00" * 8000
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
        await recv_json(ws)
        chunk = {"data": base64.urlsafe_b64encode(audio).decode(), "mime_type": "audio/pcm"}
        await ws.send(json.dumps({"realtime_input": {"media_chunks": [chunk]}}))
        await sim.wait_for(lambda s: s.turns == 1, timeout=scaled(5))
    assert sim.audio_in == audio


async def test_a_handle_resumes_the_conversation_on_a_new_socket(sim: GeminiSimulator) -> None:
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(SETUP))
        await recv_json(ws)
        await ws.send(json.dumps({"realtimeInput": {"text": "Remember the number 7."}}))
        while "turnComplete" not in (await recv_json(ws)).get("serverContent", {}):
            pass
        update = (await recv_json(ws))["sessionResumptionUpdate"]  # right after the turn
        assert update["resumable"] is True
        handle = update["newHandle"]
    async with websockets.connect(sim.url) as ws:
        resume = {"setup": {"model": f"models/{MODEL}", "sessionResumption": {"handle": handle}}}
        await ws.send(json.dumps(resume))
        first = await recv_json(ws)
        assert (
            first["setupComplete"]["sessionId"]
            == sim.connections[0].sent[0]["setupComplete"]["sessionId"]
        )
    texts = sim.connections[1].model.conversation.texts()
    assert texts == ["Remember the number 7.", sim.script.reply_text]
    assert sim.turns == 0  # no audio turns on either socket


async def test_scripted_go_away_then_close(sim: GeminiSimulator) -> None:
    sim.script.go_away_after_s = 0.05
    sim.script.go_away_time_left_s = 0.2
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(SETUP))
        messages = []
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                messages.append(await recv_json(ws))
    assert {"goAway": {"timeLeft": "0.200s"}} in messages
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011


async def test_wrong_key_closes_1008() -> None:
    async with GeminiSimulator(SimScript(api_key="right"), validate=True) as sim:
        async with websockets.connect(sim.url + "?key=wrong") as ws:
            await ws.send(json.dumps(SETUP))
            assert await closed_with(ws) == (
                1008,
                "API key not valid. Please pass a valid API key.",
            )
        async with websockets.connect(sim.url + "?key=right") as ws:
            await ws.send(json.dumps(SETUP))
            assert "setupComplete" in await recv_json(ws)


async def test_record_false_keeps_audio_out() -> None:
    async with GeminiSimulator(fast_script(), record=False) as sim:
        async with websockets.connect(sim.url) as ws:
            await ws.send(json.dumps(SETUP))
            await recv_json(ws)
            data = base64.b64encode(tone(400) + b"\x00\x00" * 8000).decode()
            audio = {"audio": {"data": data, "mimeType": "audio/pcm;rate=16000"}}
            await ws.send(json.dumps({"realtimeInput": audio}))
            await sim.wait_for(lambda s: s.turns == 1, timeout=scaled(5))
        conn = sim.connections[0]
        assert conn.audio_in == b"" and conn.audio_in_bytes == len(tone(400)) + 16000
        assert all("realtimeInput" not in f for f in conn.received)


def audio_message(pcm: bytes) -> str:
    data = base64.b64encode(pcm).decode()
    return json.dumps({"realtimeInput": {"audio": {"data": data, "mimeType": INPUT_MIME}}})


INPUT_MIME = "audio/pcm;rate=16000"


async def test_the_developer_api_refuses_transparent_resumption(sim: GeminiSimulator) -> None:
    setup = {"setup": {"model": f"models/{MODEL}", "sessionResumption": {"transparent": True}}}
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(setup))
        assert await closed_with(ws) == (1007, NO_TRANSPARENT)


async def test_vertex_ai_reports_the_last_consumed_message(sim: GeminiSimulator) -> None:
    """``lastConsumedClientMessageIndex`` counts the client messages of the connection: setup
    is 0, every later message one more (a string: protobuf JSON's int64)."""
    sim.resumption_interval_s = 0.02
    transparent = {"model": f"models/{MODEL}", "sessionResumption": {"transparent": True}}
    async with websockets.connect(sim.vertex_url) as ws:
        await ws.send(json.dumps({"setup": transparent}))
        assert "setupComplete" in await recv_json(ws)
        update = (await recv_json(ws))["sessionResumptionUpdate"]
        assert update["lastConsumedClientMessageIndex"] == "0" and update["resumable"]
        for _ in range(3):  # quiet audio: no turn, so the next periodic handle covers it
            await ws.send(audio_message(b"\x00\x00" * 320))
        while (await recv_json(ws))["sessionResumptionUpdate"][
            "lastConsumedClientMessageIndex"
        ] != "3":
            pass
    assert sim.connections[0].path.startswith("/ws/google.cloud.aiplatform.v1beta1.")


async def test_a_resumed_session_lacks_what_came_after_its_handle(sim: GeminiSimulator) -> None:
    """The simulator's state is that of the handle: caller audio the old socket got after it
    is not in the resumed session unless the client sends it again."""
    frames = [bytes([i, 0]) * 320 for i in range(1, 4)]  # quiet: no turn, so no new handle
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(SETUP))
        await recv_json(ws)
        handle = (await recv_json(ws))["sessionResumptionUpdate"]["newHandle"]  # covers none
        for pcm in frames:
            await ws.send(audio_message(pcm))
        await sim.wait_for(lambda s: len(s.connections[0].audio_in) == 3 * 640)
        assert sim.consumed_audio() == b"".join(frames)
    sim.resumption_interval_s = 0.02
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(resume_with(handle)))
        await recv_json(ws)
        assert sim.consumed_audio() == b""  # the three frames are lost to the model
        await ws.send(audio_message(frames[2]))
        await sim.wait_for(lambda s: s.consumed_audio() == frames[2])
        issued = len(handles_issued(sim.connections[1]))
        await sim.wait_for(lambda s: len(handles_issued(s.connections[1])) > issued)
        newer = handles_issued(sim.connections[1])[-1]  # after the frame: it covers it
    async with websockets.connect(sim.url) as ws:
        await ws.send(json.dumps(resume_with(newer)))
        await recv_json(ws)
        assert sim.consumed_audio() == frames[2]


def handles_issued(conn: Any) -> list[str]:
    return [
        f["sessionResumptionUpdate"]["newHandle"]
        for f in conn.sent
        if f.get("sessionResumptionUpdate", {}).get("resumable")
    ]


def resume_with(handle: str) -> dict[str, Any]:
    return {"setup": {"model": f"models/{MODEL}", "sessionResumption": {"handle": handle}}}
