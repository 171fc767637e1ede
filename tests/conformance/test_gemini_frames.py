"""Every frame GeminiLiveClient sends validates against ``google.genai.types.LiveClientMessage``
and every frame GeminiSimulator sends against ``LiveServerMessage``, over scenarios that
exercise every message kind.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import orjson
import pytest

from protocol import (
    AudioFormat,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ToolDefinition,
    TurnDetection,
)
from providers.gemini import GeminiLiveClient
from providers.simulator import SimScript, ToolCallScript
from providers.simulator.gemini import GeminiSimulator

from ..support.genai import check_client_frame, check_server_frame
from ..support.recorder import Recorder, silence, tone
from ..support.timing import scaled

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
TOOL = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def speech(rate: int = 16000) -> list[bytes]:
    """20 ms frames: 400 ms of speech, then 500 ms of silence (the turn ends)."""
    audio = tone(400, rate) + silence(500, rate)
    step = rate // 50 * 2
    return [audio[i : i + step] for i in range(0, len(audio), step)]


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSimulator]:
    script = SimScript(speed=25.0, tool_call=ToolCallScript(on_turn=1))
    async with GeminiSimulator(script, validate=True) as sim:
        yield sim


async def run_scenarios(sim: GeminiSimulator) -> None:
    """Drive one client through setup, audio, tools, cancellation, barge-in, text, goAway,
    a resumed drop, a config update and a replayed drop; a second one in manual mode; a third
    on Vertex AI (transparent resumption) through a drop mid-utterance and a goAway."""
    config = RealtimeSessionConfig(
        instructions="Be brief.",
        voice="Puck",
        language="en-US",
        temperature=0.5,
        max_output_tokens=400,
        tools=[TOOL],
        input_audio=AudioFormat(sample_rate=24000),
        turn_detection=TurnDetection(silence_ms=300, prefix_padding_ms=100, threshold=0.7),
    )
    client = GeminiLiveClient(model=MODEL, url=sim.url, backoff_initial_s=0.05)
    events = Recorder(client)
    await client.connect(config)
    for frame in speech(24000):
        client.send_audio(frame)
    await events.wait_count("tool-call")
    call_id = sim.connections[0].sent[-1]["toolCall"]["functionCalls"][0]["id"]
    client.send_tool_response([RealtimeToolResponse(call_id=call_id, output={"temp": 21})])
    await events.wait_count("response-done")

    sim.script.tool_call = ToolCallScript(on_turn=0)  # a call every turn, then a barge-in
    for frame in speech(24000):
        client.send_audio(frame)
    await events.wait_count("tool-call", 2)
    for frame in speech(24000):
        client.send_audio(frame)
    await events.wait_count("tool-call-cancelled")
    sim.script.tool_call = None

    sim.script.speed = 2.0
    client.request_response("Tell me a story.")
    await events.wait_count("audio")
    for frame in speech(24000):
        client.send_audio(frame)
    await events.wait_count("interrupted")
    sim.script.speed = 25.0
    await events.wait_count("response-done", 4, seconds=10)

    client.request_response(None)  # audioStreamEnd
    await sim.go_away(time_left_s=scaled(1.0))
    await events.wait_count("reconnected")
    await sim.drop(1011)
    await events.wait_count("reconnected", 2)
    await client.update_config({"instructions": "Be briefer.", "output_transcription": False})
    await events.wait_count("config-updated")
    await client.update_config(
        {"provider_options": {"setup": {"sessionResumption": None}}}
    )  # from now on no handles: the next drop replays the conversation
    await sim.drop(1011)
    await events.wait_count("reconnected", 4)
    await sim.wait_for(
        lambda s: any("clientContent" in f for f in s.connections[-1].received), timeout=scaled(5)
    )
    await client.disconnect()

    manual = GeminiLiveClient(model=f"models/{MODEL}", url=sim.url)
    events = Recorder(manual)
    await manual.connect(RealtimeSessionConfig(turn_detection=TurnDetection(mode="manual")))
    for frame in speech(24000):
        manual.send_audio(frame)
    manual.request_response("and the weather?")
    await events.wait_count("response-done")
    await manual.disconnect()

    vertex = GeminiLiveClient(model=MODEL, url=sim.vertex_url, backoff_initial_s=0.05)
    events = Recorder(vertex)
    await vertex.connect(RealtimeSessionConfig(input_audio=AudioFormat(sample_rate=24000)))
    for frame in speech(24000):
        vertex.send_audio(frame)
    await events.wait_count("response-done")
    for frame in speech(24000)[:10]:  # the next utterance has begun: the drop cuts it
        vertex.send_audio(frame)
    await sim.drop(1011)
    await events.wait_count("reconnected")
    await sim.go_away(time_left_s=1.0)
    await events.wait_count("reconnected", 2)
    await vertex.disconnect()


async def test_every_client_and_server_frame_validates(sim: GeminiSimulator) -> None:
    await run_scenarios(sim)
    kinds: set[str] = set()
    realtime: set[str] = set()
    server: set[str] = set()
    for conn in sim.connections:
        for frame in conn.received:
            check_client_frame(orjson.dumps(frame))
            kinds.update(frame)
            realtime.update(frame.get("realtimeInput", {}))
        for frame in conn.sent:
            check_server_frame(orjson.dumps(frame))
            server.update(frame)
            server.update(frame.get("serverContent", {}))
    assert kinds == {"setup", "realtimeInput", "toolResponse", "clientContent"}
    vertex = [c for c in sim.connections if c.path.startswith("/ws/google.cloud.aiplatform.")]
    assert vertex and all(
        c.received[0]["setup"]["sessionResumption"]["transparent"] is True for c in vertex
    )
    assert any(
        "lastConsumedClientMessageIndex" in f.get("sessionResumptionUpdate", {})
        for c in vertex
        for f in c.sent
    )
    assert realtime == {"audio", "text", "audioStreamEnd", "activityStart", "activityEnd"}
    assert {
        "setupComplete",
        "serverContent",
        "toolCall",
        "toolCallCancellation",
        "goAway",
        "sessionResumptionUpdate",
        "usageMetadata",
        "voiceActivity",
        "modelTurn",
        "inputTranscription",
        "outputTranscription",
        "generationComplete",
        "interrupted",
        "turnComplete",
    } <= server
    assert sim.validation_errors == [] and sim.internal_errors == []


def test_recipe_catches_bad_frames() -> None:
    """The oracle is strict enough to matter: typos, two messages, wrong types fail."""
    with pytest.raises(ValueError):
        check_client_frame(json.dumps({"setup": {"model": "m", "responseModalites": ["AUDIO"]}}))
    with pytest.raises(ValueError):
        check_client_frame(json.dumps({"setup": {"model": "m"}, "realtimeInput": {}}))
    with pytest.raises(ValueError):
        check_client_frame(json.dumps({"toolResponse": {"functionResponses": [{"response": 1}]}}))
    with pytest.raises(ValueError):
        check_server_frame(json.dumps({"serverContent": {"turnCompleted": True}}))
