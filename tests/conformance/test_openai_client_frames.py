"""Every frame the OpenAI client sends validates against the SDK's client-event union.

The client runs the component scenarios against the simulator (full turn, tool round trip,
request_response, in-place updates including a rejected voice change, barge-in with truncate
and cancel, manual commits, G.711, a reconnect with its replay, Azure headers); every frame the
simulator received is then validated against ``openai.types.realtime.RealtimeClientEvent`` with
the strict discriminated ``TypeAdapter`` recipe of ``providers/simulator/openai_schema.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args

import pytest
from openai.types.realtime import RealtimeClientEvent
from pydantic import Field, TypeAdapter, ValidationError

from protocol import (
    AudioFormat,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ToolDefinition,
    TurnDetection,
)
from protocol.audio import pcm16_to_alaw
from providers.openai import OpenAIRealtimeClient
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript

from ..support.recorder import Recorder
from ..support.recorder import silence as _silence
from ..support.recorder import tone as _tone


def _strict(union: Any) -> TypeAdapter[Any]:
    members = get_args(get_args(union)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


CLIENT_EVENTS = _strict(RealtimeClientEvent)
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def tone(ms: int, rate: int = 24000) -> bytes:
    return _tone(ms, rate)


def silence(ms: int, rate: int = 24000) -> bytes:
    return _silence(ms, rate)


async def send(client: OpenAIRealtimeClient, audio: bytes, frame: int = 960) -> None:
    """``audio`` in frames (20 ms of 24 kHz PCM16 by default), letting the writer run between."""
    for start in range(0, len(audio), frame):
        client.send_audio(audio[start : start + frame])
        await asyncio.sleep(0)


async def conversation_scenario(sim: OpenAISimulator) -> None:
    client = OpenAIRealtimeClient(
        model="gpt-realtime", url=sim.url, backoff_initial_s=0.01, backoff_max_s=0.05
    )
    s = Recorder(client, within=10)
    await client.connect(
        RealtimeSessionConfig(
            instructions="Be brief.",
            tools=[WEATHER],
            tool_choice="auto",
            voice="marin",
            language="en",
            max_output_tokens=800,
            turn_detection=TurnDetection(threshold=0.5, silence_ms=300, prefix_padding_ms=200),
        )
    )
    # turn 1: tool call and its round trip
    await send(client, tone(500) + silence(500))
    await s.wait_count("tool-call")
    call = next(p for n, p in s.events if n == "tool-call")
    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output={"t": 21})])
    await s.wait_count("response-done", 2)
    # request_response and in-place updates (one with a voice change after audio)
    client.request_response("Say goodbye.")
    await s.wait_count("response-done", 3)
    await client.update_config({"instructions": "Be briefer.", "voice": "cedar"})
    await client.update_config({"input_transcription": False, "max_output_tokens": None})
    await client.update_config({"tool_choice": "get_weather"})
    # a reconnect: config and conversation (messages, function call and output) replayed
    await sim.drop(1011)
    await s.wait_count("reconnected")
    # barge-in over a long reply, with the client cancelling the response itself
    await client.update_config({"turn_detection": TurnDetection(interrupt_response=False)})
    sim.script.reply_text = "A long answer that goes on and on for quite a while indeed."
    sim.script.speed = 1.0
    await send(client, tone(500) + silence(500))
    await s.wait_count("audio", s.count("audio") + 3)
    await send(client, tone(500))
    await s.wait_count("interrupted")
    sim.script.reply_text, sim.script.speed = "Okay.", 0
    await send(client, silence(500))
    await s.wait_count("response-done", 5)
    await client.disconnect()


async def telephony_scenario(sim: OpenAISimulator) -> None:
    fmt = AudioFormat(encoding="alaw", sample_rate=8000)
    client = OpenAIRealtimeClient(
        model="gpt-realtime", url=sim.url, api_key="sk-test", auth_header="api-key"
    )
    s = Recorder(client, within=10)
    await client.connect(
        RealtimeSessionConfig(
            input_audio=fmt,
            output_audio=fmt,
            turn_detection=TurnDetection(mode="manual"),
            input_transcription=False,
            provider_options={"audio": {"input": {"noise_reduction": {"type": "far_field"}}}},
        )
    )
    await send(client, pcm16_to_alaw(tone(400, 8000)), frame=160)
    client.request_response()
    await s.wait_count("response-done")
    await client.update_config(
        {"turn_detection": TurnDetection(mode="semantic_vad"), "output_audio": AudioFormat()}
    )
    await client.disconnect()


@pytest.mark.parametrize("scenario", [conversation_scenario, telephony_scenario])
async def test_every_client_frame_is_a_valid_ga_client_event(
    scenario: Callable[[OpenAISimulator], Any],
) -> None:
    script = SimScript(reply_text="Sure.", speed=0, tool_call=ToolCallScript(on_turn=1))
    async with OpenAISimulator(script, validate=True) as sim:
        await scenario(sim)
    frames = [frame for conn in sim.connections for frame in conn.received]
    problems = []
    for frame in frames:
        try:
            CLIENT_EVENTS.validate_python(frame)
        except ValidationError as exc:
            problems.append(f"{frame.get('type')}: {exc}")
    assert problems == []
    kinds = {f["type"] for f in frames}
    if scenario is conversation_scenario:
        assert kinds == {
            "session.update",
            "input_audio_buffer.append",
            "conversation.item.create",
            "response.create",
            "response.cancel",
            "conversation.item.truncate",
        }
        items = {f["item"]["type"] for f in frames if f["type"] == "conversation.item.create"}
        assert items == {"message", "function_call", "function_call_output"}
        (truncate,) = [f for f in frames if f["type"] == "conversation.item.truncate"]
        assert type(truncate["audio_end_ms"]) is int
    else:
        assert "input_audio_buffer.commit" in kinds
    for conn in sim.connections:
        assert "openai-beta" not in conn.request_headers
    errors = [f["error"] for conn in sim.connections for f in conn.sent if f["type"] == "error"]
    assert errors == []  # the server accepted every frame, too
    assert sim.validation_errors == []
