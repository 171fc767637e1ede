"""The official ``openai`` SDK client completes a session with a tool call against the simulator.

``AsyncOpenAI(websocket_base_url=sim.url_base).realtime.connect(model="gpt-realtime")``:
session.update, caller audio, the tool call, ``function_call_output`` + ``response.create``,
the spoken reply and ``response.done``. Every
frame the SDK sent validates against the client-event union, every frame the simulator sent
against the server-event union.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from openai import AsyncOpenAI

from providers.simulator import OpenAISimulator, SimScript, ToolCallScript
from providers.simulator.model import synthesize_speech
from providers.simulator.openai_schema import validate_client_event, validate_server_event

from ..support.timing import scaled

TIMEOUT = 10.0


async def test_sdk_client_completes_a_tool_call_session() -> None:
    script = SimScript(
        speed=20.0,
        reply_text="Let me check.",
        tool_call=ToolCallScript(arguments={"city": "Paris"}, on_turn=1),
        api_key="sk-test",
    )
    async with OpenAISimulator(script, validate=True) as sim:
        client = AsyncOpenAI(api_key="sk-test", websocket_base_url=sim.url_base)
        seen: list[str] = []
        audio = bytearray()
        transcript = ""
        calls: list[Any] = []
        async with asyncio.timeout(scaled(TIMEOUT)):
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "instructions": "You are a weather assistant.",
                        "audio": {
                            "input": {
                                "format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "gpt-4o-mini-transcribe"},
                                "turn_detection": {
                                    "type": "server_vad",
                                    "silence_duration_ms": 300,
                                },
                            },
                            "output": {
                                "format": {"type": "audio/pcm", "rate": 24000},
                                "voice": "marin",
                            },
                        },
                        "tools": [
                            {
                                "type": "function",
                                "name": "get_weather",
                                "description": "Current weather for a city.",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"],
                                },
                            }
                        ],
                        "tool_choice": "auto",
                    }
                )
                caller = synthesize_speech(800, 11) + bytes(48 * 500)
                for start in range(0, len(caller), 960):  # 20 ms frames
                    chunk = base64.b64encode(caller[start : start + 960]).decode()
                    await conn.input_audio_buffer.append(audio=chunk)

                async for event in conn:
                    seen.append(event.type)
                    if event.type == "response.function_call_arguments.done":
                        calls.append(event)
                        await conn.conversation.item.create(
                            item={
                                "type": "function_call_output",
                                "call_id": event.call_id,
                                "output": '"sunny and 21 degrees"',
                            }
                        )
                    elif event.type == "response.output_audio.delta":
                        audio += base64.b64decode(event.delta)
                    elif event.type == "response.output_audio_transcript.done":
                        transcript = event.transcript
                    elif event.type == "response.done":
                        output = event.response.output or []
                        if output and output[0].type == "function_call":
                            await conn.response.create()
                        else:
                            assert event.response.status == "completed"
                            assert event.response.usage is not None
                            break

        assert seen[0] == "session.created"
        assert "session.updated" in seen
        assert seen.index("input_audio_buffer.speech_started") < seen.index(
            "input_audio_buffer.speech_stopped"
        )
        assert "conversation.item.input_audio_transcription.completed" in seen
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert calls[0].arguments == '{"city":"Paris"}'
        assert "sunny and 21 degrees" in transcript
        assert len(audio) > 0 and len(audio) % 2 == 0
        assert seen.count("response.done") == 2

        conn_record = sim.connections[0]
        assert conn_record.path == "/v1/realtime"
        assert conn_record.query == {"model": "gpt-realtime"}
        assert conn_record.request_headers["authorization"] == "Bearer sk-test"
        assert "openai-beta" not in conn_record.request_headers
        sent_types = [frame["type"] for frame in conn_record.received]
        assert sent_types[0] == "session.update"
        assert sent_types[-2:] == ["conversation.item.create", "response.create"]
        for frame in conn_record.received:
            validate_client_event(frame)
        for frame in conn_record.sent:
            validate_server_event(frame)
        assert sim.validation_errors == []
        assert sim.internal_errors == []
        assert sim.turns == 1
