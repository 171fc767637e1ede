"""GeminiLiveClient <-> GeminiSimulator: turns, tools, cancellation and barge-in."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from protocol import (
    AudioConverter,
    AudioFormat,
    RealtimeToolResponse,
    TurnDetection,
)
from providers.simulator import ToolCallScript

from ...support.timing import scaled
from .conftest import (
    WEATHER,
    Kit,
    native_config,
    received,
    sent_frames,
    server_content,
    tone,
    utterance,
)


async def test_full_turn(kit: Kit) -> None:
    config = native_config(
        instructions="Be brief.",
        voice="Puck",
        output_audio=AudioFormat(sample_rate=16000),
    )
    client, rec = await kit.connected(config)
    assert rec.names() == ["connected"]
    setup = kit.sim.connections[0].received[0]["setup"]
    assert setup["model"].startswith("models/")
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert setup["sessionResumption"] == {}
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("response-done")

    audio_frames = received(kit.sim, "realtimeInput")
    assert audio_frames and all(
        f["realtimeInput"]["audio"]["mimeType"] == "audio/pcm;rate=16000" for f in audio_frames
    )
    assert kit.sim.audio_in == b"".join(utterance())
    user = [t for t in rec.of("transcript") if t.role == "user"]
    assert [t.final for t in user] == [False, False, True] and user[-1].text == "caller speech"
    assistant = [t for t in rec.of("transcript") if t.role == "assistant"]
    assert assistant[-1].final and assistant[-1].text == kit.sim.script.reply_text
    assert "".join(t.text for t in assistant[:-1]) == kit.sim.script.reply_text
    audio = rec.of("audio")
    assert audio and {a.sample_rate for a in audio} == {16000}
    model_audio = sum(
        len(base64.b64decode(p["inlineData"]["data"]))
        for f in sent_frames(kit.sim, "serverContent")
        for p in f["serverContent"].get("modelTurn", {}).get("parts", [])
    )
    # 24 kHz from the model -> 16 kHz for the session: two thirds of the bytes
    assert abs(sum(len(a.data) for a in audio) - model_audio * 2 // 3) <= 64
    started, stopped = rec.of("speech-started"), rec.of("speech-stopped")
    assert [s.audio_ms for s in started] == [0] and stopped[0].audio_ms >= 400 + 300
    done = rec.of("response-done")
    assert len(done) == 1 and done[0].status == "completed"
    assert done[0].usage is not None and done[0].usage.total_tokens > 0
    assert done[0].response_id == audio[0].response_id == assistant[-1].item_id
    assert rec.names().index("response-done") > rec.names().index("transcript")


async def test_tool_round_trip(kit: Kit) -> None:
    kit.sim.script.tool_call = ToolCallScript(arguments={"city": "Paris"}, on_turn=1)
    client, rec = await kit.connected(native_config(tools=[WEATHER]))
    declared = kit.sim.connections[0].received[0]["setup"]["tools"]
    assert declared == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parametersJsonSchema": WEATHER.parameters,
                }
            ]
        }
    ]
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("tool-call")
    call = rec.of("tool-call")[0]
    assert call.name == "get_weather" and call.arguments == {"city": "Paris"}
    assert rec.count("response-done") == 0  # the model turn stays open for the result

    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="sunny, 21 C")])
    await rec.wait_count("response-done")
    responses = received(kit.sim, "toolResponse")
    assert responses == [
        {
            "toolResponse": {
                "functionResponses": [
                    {
                        "id": call.call_id,
                        "name": "get_weather",
                        "response": {"output": "sunny, 21 C"},
                    }
                ]
            }
        }
    ]
    final = [t for t in rec.of("transcript") if t.role == "assistant" and t.final]
    assert len(final) == 1 and "sunny, 21 C" in final[0].text
    assert [d.status for d in rec.of("response-done")] == ["completed"]
    assert server_content(kit.sim, "turnComplete") == 1


async def test_tool_call_cancelled_by_barge_in(kit: Kit) -> None:
    kit.sim.script.tool_call = ToolCallScript(on_turn=1)
    client, rec = await kit.connected(native_config(tools=[WEATHER]))
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("tool-call")
    call_id = rec.of("tool-call")[0].call_id

    client.send_audio(tone(200))  # the caller talks over the pending call
    await rec.wait_count("tool-call-cancelled")
    assert rec.of("tool-call-cancelled")[0].call_ids == [call_id]
    assert sent_frames(kit.sim, "toolCallCancellation") == [
        {"toolCallCancellation": {"ids": [call_id]}}
    ]
    await rec.wait_count("response-done")
    assert rec.of("response-done")[0].status == "cancelled"

    # a late result for the cancelled call is dropped, not sent
    client.send_tool_response([RealtimeToolResponse(call_id=call_id, output="late")])
    client.request_response("Are you there?")
    await kit.sim.wait_for(
        lambda s: received(s, "realtimeInput")[-1]["realtimeInput"].get("text"), timeout=scaled(5)
    )
    assert received(kit.sim, "toolResponse") == []


async def test_barge_in(kit: Kit) -> None:
    kit.sim.script.speed = 2.0
    kit.sim.script.reply_audio_ms = 4000
    client, rec = await kit.connected()
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait(lambda r: r.count("audio") >= 2)
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("interrupted")
    await rec.wait_count("response-done", 2, seconds=10)

    first, second = rec.of("response-done")[:2]
    assert first.status == "cancelled" and second.status == "completed"
    assert rec.of("interrupted")[0].response_id == first.response_id
    assert server_content(kit.sim, "interrupted", 0) == 1
    # barge-in: interrupted then turnComplete, no generationComplete for the cut turn
    assert server_content(kit.sim, "generationComplete", 0) == 1
    assert server_content(kit.sim, "turnComplete", 0) == 2
    names = rec.names()
    assert names.index("interrupted") < names.index("response-done")


async def test_no_interruption_keeps_the_reply(kit: Kit) -> None:
    kit.sim.script.speed = 4.0
    kit.sim.script.reply_audio_ms = 2000
    config = native_config(turn_detection=TurnDetection(interrupt_response=False))
    client, rec = await kit.connected(config)
    assert kit.sim.connections[0].received[0]["setup"]["realtimeInputConfig"] == {
        "activityHandling": "NO_INTERRUPTION"
    }
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait(lambda r: r.count("audio") >= 2)
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("response-done", 2, seconds=10)
    assert rec.count("interrupted") == 0
    assert [d.status for d in rec.of("response-done")] == ["completed", "completed"]


async def test_request_response_sends_text_input(kit: Kit) -> None:
    client, rec = await kit.connected()
    client.request_response("Say hello")
    await rec.wait_count("response-done")
    assert received(kit.sim, "realtimeInput") == [{"realtimeInput": {"text": "Say hello"}}]
    assert kit.sim.connections[0].model.conversation.texts("user") == ["Say hello"]


async def test_manual_turns_bracket_the_audio(kit: Kit) -> None:
    config = native_config(turn_detection=TurnDetection(mode="manual"))
    client, rec = await kit.connected(config)
    for frame in utterance():
        client.send_audio(frame)
    client.request_response()
    await rec.wait_count("response-done")
    frames = [f["realtimeInput"] for f in received(kit.sim, "realtimeInput")]
    assert frames[0] == {"activityStart": {}} and frames[-1] == {"activityEnd": {}}
    assert all("audio" in f for f in frames[1:-1])
    assert kit.sim.turns == 1


@pytest.mark.parametrize("rate", [8000, 48000])
async def test_input_converted_to_16k(kit: Kit, rate: int) -> None:
    fmt = AudioFormat(sample_rate=rate)
    client, rec = await kit.connected(native_config(input_audio=fmt))
    reference = AudioConverter(fmt, AudioFormat(sample_rate=16000))
    expected = b""
    for frame in utterance(rate):
        client.send_audio(frame)
        expected += reference.convert(frame)
    await rec.wait_count("response-done")
    await kit.sim.wait_for(lambda s: len(s.audio_in) >= len(expected), timeout=scaled(5))
    got = np.frombuffer(kit.sim.audio_in, dtype="<i2").astype(np.int32)
    want = np.frombuffer(expected, dtype="<i2").astype(np.int32)
    # soxr dithers its int16 output, so two converters differ by a few LSB, never by a shift
    assert got.size == want.size and int(np.abs(got - want).max()) <= 4
