"""The official ``google-genai`` Live client completes a session with a tool call against
GeminiSimulator, over plain ``ws://`` (``sdk_client`` points the SDK's WebSocket base URL at it).
Every frame the SDK sent validates against ``LiveClientMessage``.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
from google import genai
from google.genai import types as T

from providers.simulator import SimScript, ToolCallScript
from providers.simulator.gemini import GeminiSimulator

from ..support.genai import check_client_frame
from ..support.timing import scaled


def sdk_client(sim: GeminiSimulator, api_key: str) -> genai.Client:
    client = genai.Client(api_key=api_key, http_options=T.HttpOptions(api_version="v1beta"))
    # plain ws:// to the loopback simulator instead of wss://generativelanguage.googleapis.com
    base = f"ws://{sim.host}:{sim.port}"
    client._api_client._websocket_base_url = lambda http_options=None: base  # type: ignore[method-assign]
    client._api_client._websocket_ssl_ctx = {}
    return client


def caller_audio() -> list[bytes]:
    rate = 16000
    t = np.arange(rate * 400 // 1000) / rate
    loud = (6000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    audio = loud + b"\x00\x00" * (rate // 2)
    return [audio[i : i + 640] for i in range(0, len(audio), 640)]


async def test_official_sdk_completes_a_session_with_a_tool_call() -> None:
    script = SimScript(speed=25.0, tool_call=ToolCallScript(arguments={"city": "Paris"}))
    async with GeminiSimulator(script, validate=True) as sim:
        sim.script.api_key = "sdk-test-key"
        client = sdk_client(sim, "sdk-test-key")
        config = T.LiveConnectConfig(
            response_modalities=[T.Modality.AUDIO],
            system_instruction="You are a weather bot.",
            tools=[
                T.Tool(
                    function_declarations=[
                        T.FunctionDeclaration(
                            name="get_weather",
                            description="Weather for a city",
                            parameters_json_schema={
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                            },
                        )
                    ]
                )
            ],
            input_audio_transcription=T.AudioTranscriptionConfig(),
            output_audio_transcription=T.AudioTranscriptionConfig(),
            session_resumption=T.SessionResumptionConfig(),
        )
        audio = bytearray()
        transcript = ""
        handles: list[str] = []

        async def session_run() -> T.FunctionCall:
            async with client.aio.live.connect(
                model="gemini-2.5-flash-native-audio-preview-12-2025", config=config
            ) as session:
                for chunk in caller_audio():
                    await session.send_realtime_input(
                        audio=T.Blob(data=chunk, mime_type="audio/pcm;rate=16000")
                    )
                call: T.FunctionCall | None = None
                async for message in session.receive():
                    if (
                        message.session_resumption_update
                        and message.session_resumption_update.new_handle
                    ):
                        handles.append(message.session_resumption_update.new_handle)
                    if message.tool_call and message.tool_call.function_calls:
                        call = message.tool_call.function_calls[0]
                        break
                assert call is not None and call.id
                await session.send_tool_response(
                    function_responses=[
                        T.FunctionResponse(
                            id=call.id, name=call.name, response={"output": "sunny, 21 C"}
                        )
                    ]
                )
                nonlocal transcript
                async for message in session.receive():  # ends with this turn's turnComplete
                    content = message.server_content
                    if content and content.model_turn and content.model_turn.parts:
                        for part in content.model_turn.parts:
                            if part.inline_data and part.inline_data.data:
                                audio.extend(part.inline_data.data)
                    if content and content.output_transcription:
                        transcript += content.output_transcription.text or ""
                    if (
                        message.session_resumption_update
                        and message.session_resumption_update.new_handle
                    ):
                        handles.append(message.session_resumption_update.new_handle)
                return call

        call = await asyncio.wait_for(session_run(), scaled(10))

    assert call.name == "get_weather" and call.args == {"city": "Paris"}
    assert "sunny, 21 C" in transcript
    assert len(audio) > 24000  # more than half a second of 24 kHz PCM16
    assert handles  # resumption handles reached the SDK
    conn = sim.connections[0]
    assert conn.request_headers["x-goog-api-key"] == "sdk-test-key"
    assert conn.path.endswith("v1beta.GenerativeService.BidiGenerateContent")
    # the SDK's own frames (mixed casing, urlsafe base64) were all understood
    assert len(conn.audio_in) == sum(len(c) for c in caller_audio())
    for frame in conn.received:
        check_client_frame(json.dumps(frame))
    assert {next(iter(f)) for f in conn.received} == {"setup", "realtime_input", "tool_response"}
    assert sim.validation_errors == [] and sim.internal_errors == []
