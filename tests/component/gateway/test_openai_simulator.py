"""The gateway in front of the real OpenAI client: caller -> gateway -> Redis -> worker ->
``OpenAIRealtimeClient`` -> OpenAI simulator (real wire protocol), with speech, a tool call and
the spoken answer coming back as binary audio."""

from __future__ import annotations

from typing import Any

import numpy as np

from providers.simulator import OpenAISimulator, SimScript, ToolCallScript

RATE = 24000


def _speech_then_silence() -> list[bytes]:
    """20 ms frames: 600 ms of a loud tone (speech to the simulator's VAD), then 600 ms silence."""
    t = np.arange(int(RATE * 0.6)) / RATE
    tone = (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    audio = tone + b"\x00\x00" * int(RATE * 0.6)
    step = RATE * 2 // 50
    return [audio[i : i + step] for i in range(0, len(audio), step)]


async def test_a_spoken_call_with_a_tool_through_the_gateway(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    script = SimScript(
        reply_text="It is eighteen degrees in Paris.",
        user_transcript="What is the weather in Paris?",
        tool_call=ToolCallScript(name="get_weather", arguments={"city": "Paris"}, on_turn=1),
        speed=0,
    )
    async with OpenAISimulator(script) as sim:
        await start_worker(openai_url=sim.url, openai_api_key="sk-simulated")
        gw = await start_gateway()
        caller = await open_caller(gw.url)
        tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
        started = await caller.start(
            provider="openai", model="gpt-realtime", config={"tools": [tool]}
        )
        assert started["capabilities"]["config_update"] == "in-place"
        for data in _speech_then_silence():
            await caller.send_raw(data)

        await caller.wait_for(lambda: bool(caller.of("tool-call")), within=10)
        call = caller.of("tool-call")[0]
        assert (call["name"], call["arguments"]) == ("get_weather", {"city": "Paris"})
        assert caller.of("speech-started") and caller.of("speech-stopped")
        await caller.send(
            {
                "type": "tool.response",
                "id": "w",
                "responses": [{"call_id": call["call_id"], "output": "18 C"}],
            }
        )
        await caller.wait_for(
            lambda: any(t["role"] == "assistant" and t["final"] for t in caller.of("transcript")),
            within=10,
        )
        await caller.wait_for(lambda: len(caller.of("response-done")) == 2, within=10)
        spoken = next(t for t in caller.of("transcript") if t["role"] == "assistant" and t["final"])
        assert "18 C" in spoken["text"]
        # the answer's audio arrived as binary frames announced by its response id
        meta = caller.of("audio.meta")
        assert meta and meta[-1]["sample_rate"] == 24000
        assert meta[-1]["response_id"] == caller.of("response-done")[-1]["response_id"]
        assert sum(len(a) for a in caller.audio) > RATE  # over half a second of PCM16 speech
        assert caller.of("response-done")[-1]["usage"]["total_tokens"] > 0

        await caller.send({"type": "session.end"})
        assert await caller.wait_closed() == (1000, "session ended")
