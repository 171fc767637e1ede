"""Conversation behaviour of the OpenAI client against the loopback simulator."""

from __future__ import annotations

import base64
from typing import Any

from protocol import (
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    ToolDefinition,
    TurnDetection,
)
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript

from ...support.timing import scaled

WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
LONG_REPLY = (
    "This is a long reply that keeps going for several seconds so that the caller has plenty "
    "of time to interrupt it somewhere in the middle of a sentence."
)


async def test_full_turn(kit: Any) -> None:
    script = SimScript(reply_text="Sure, I can help with that.", speed=20.0, tool_call=None)
    async with OpenAISimulator(script, validate=True) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(instructions="Be brief."))
        assert rec.names() == ["connected"]
        await kit.say(client)
        await rec.wait_count("response-done")
        await client.disconnect()

    names = rec.names()
    assert names.index("speech-started") < names.index("speech-stopped")
    user = [t for t in rec.of("transcript") if t.role == "user"]
    assert [t.final for t in user][-1] is True
    assert user[-1].text == script.user_transcript
    assistant = [t for t in rec.of("transcript") if t.role == "assistant"]
    finals = [t for t in assistant if t.final]
    assert [t.text for t in finals] == [script.reply_text]
    assert "".join(t.text for t in assistant if not t.final) == script.reply_text
    (done,) = rec.of("response-done")
    assert done.status == "completed"
    assert done.usage is not None and done.usage.output_tokens > 0
    audio = rec.of("audio")
    sent_audio = b"".join(
        base64.b64decode(f["delta"]) for f in kit.server_frames(sim, "response.output_audio.delta")
    )
    assert b"".join(a.data for a in audio) == sent_audio
    assert {a.response_id for a in audio} == {done.response_id}
    assert names[-1] == "closed"
    assert sim.validation_errors == []
    assert kit.server_errors(sim) == []


async def test_tool_round_trip_sends_one_response_create_after_done(kit: Any) -> None:
    script = SimScript(reply_text="Here you go.", speed=0, tool_call=ToolCallScript(on_turn=1))
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(tools=[WEATHER]))

        def answer_at_once(call: Any) -> None:
            # Answer inside the tool-call handler, before response.done was even read: the
            # client must still hold the response.create until that response is done.
            client.send_tool_response(
                [RealtimeToolResponse(call_id=call.call_id, output={"sky": "sunny"})]
            )

        client.on("tool-call", answer_at_once)
        await kit.say(client)
        await rec.wait_count("response-done", 2)
        await client.disconnect()

    (call,) = rec.of("tool-call")
    assert call.name == "get_weather"
    assert call.arguments == {"city": "Paris"}
    creates = kit.client_frames(sim, "response.create")
    assert len(creates) == 1
    outputs = [
        f
        for f in kit.client_frames(sim, "conversation.item.create")
        if f["item"]["type"] == "function_call_output"
    ]
    assert [o["item"]["call_id"] for o in outputs] == [call.call_id]
    received = sim.connections[0].received
    assert received.index(outputs[0]) < received.index(creates[0])
    assert "conversation_already_has_active_response" not in kit.server_errors(sim)
    dones = rec.of("response-done")
    assert [d.status for d in dones] == ["completed", "completed"]
    final = [t.text for t in rec.of("transcript") if t.role == "assistant" and t.final]
    assert len(final) == 1 and "sunny" in final[0]


async def test_barge_in_truncates_with_a_clamped_integer(kit: Any) -> None:
    script = SimScript(reply_text=LONG_REPLY, speed=1.0, tool_call=None)
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim)
        await kit.say(client)
        await rec.wait_count("audio", 3)
        await kit.send(client, kit.tone(500))  # the caller talks over the reply
        await rec.wait_count("interrupted")
        script.reply_text, script.speed = "Okay.", 0  # keep the answer to the barge-in short
        await kit.send(client, kit.silence(500))
        await sim.wait_for(
            lambda s: kit.server_frames(s, "conversation.item.truncated"), timeout=scaled(5)
        )
        await rec.wait_count("response-done", 2, seconds=15)
        await client.disconnect()

    (interrupted,) = rec.of("interrupted")
    first_done = rec.of("response-done")[0]
    assert interrupted.response_id == first_done.response_id
    assert first_done.status == "cancelled"
    (truncate,) = kit.client_frames(sim, "conversation.item.truncate")
    assert type(truncate["audio_end_ms"]) is int
    received_ms = (
        sum(
            len(base64.b64decode(f["delta"]))
            for f in kit.server_frames(sim, "response.output_audio.delta")
            if f["item_id"] == truncate["item_id"]
        )
        / 48
    )
    assert 0 <= truncate["audio_end_ms"] <= received_ms
    assert kit.server_errors(sim) == []  # no "already shorter than" invalid_value
    names = rec.names()
    # no audio of the cut reply after the interruption
    cut = [
        i
        for i, (n, p) in enumerate(rec.events)
        if n == "audio" and p.response_id == interrupted.response_id
    ]
    assert max(cut) < [n for n, _ in rec.events].index("interrupted")
    assert names.count("speech-started") == 2


async def test_request_response_is_queued_behind_the_active_response(kit: Any) -> None:
    script = SimScript(reply_text="First answer, spoken slowly.", speed=4.0, tool_call=None)
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim)
        await kit.say(client)
        await rec.wait_count("audio")  # the automatic response is active now
        client.request_response("Now say goodbye.")
        await rec.wait_count("response-done", 2, seconds=15)
        await client.disconnect()

    creates = kit.client_frames(sim, "response.create")
    assert creates == [
        {
            "type": "response.create",
            "event_id": creates[0]["event_id"],
            "response": {"instructions": "Now say goodbye."},
        }
    ]
    assert kit.server_errors(sim) == []
    assert [d.status for d in rec.of("response-done")] == ["completed", "completed"]


async def test_update_config_in_place_sends_only_changed_fields(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(instructions="a", voice="marin"))
        await client.update_config({"instructions": "b", "voice": "marin", "temperature": 0.5})
        updates = kit.client_frames(sim, "session.update")
        assert updates[-1]["session"] == {"type": "realtime", "instructions": "b"}
        assert [e.strategy for e in rec.of("config-updated")] == ["in-place"]
        await client.update_config(
            RealtimeSessionConfigUpdate(
                turn_detection=TurnDetection(mode="server_vad", silence_ms=700)
            )
        )
        assert kit.client_frames(sim, "session.update")[-1]["session"] == {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "create_response": True,
                        "interrupt_response": True,
                        "silence_duration_ms": 700,
                    }
                }
            },
        }
        assert client.config is not None and client.config.instructions == "b"
        session = kit.server_frames(sim, "session.updated")[-1]["session"]
        assert session["instructions"] == "b"
        await client.disconnect()
    assert rec.count("config-updated") == 2
    assert kit.server_errors(sim) == []


async def test_voice_change_after_audio_is_an_error_and_the_rest_applies(kit: Any) -> None:
    async with OpenAISimulator(SimScript(speed=0, tool_call=None)) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(voice="marin"))
        await kit.say(client)
        await rec.wait_count("response-done")
        await client.update_config({"voice": "cedar", "instructions": "changed"})
        await client.disconnect()

    (error,) = rec.of("error")
    assert error.code == "cannot_update_voice"
    assert error.recoverable is True
    assert kit.client_frames(sim, "session.update")[-1]["session"] == {
        "type": "realtime",
        "instructions": "changed",
    }
    assert rec.count("config-updated") == 1
    assert kit.server_frames(sim, "session.updated")[-1]["session"]["instructions"] == "changed"
    assert kit.server_errors(sim) == []


async def test_manual_turns_commit_and_request(kit: Any) -> None:
    async with OpenAISimulator(SimScript(speed=0, tool_call=None)) as sim:
        config = RealtimeSessionConfig(turn_detection=TurnDetection(mode="manual"))
        client, rec = await kit.session(sim, config)
        await kit.say(client, pause_ms=0)
        client.request_response()
        await rec.wait_count("response-done")
        await client.disconnect()
    kinds = [f["type"] for f in kit.client_frames(sim) if f["type"] != "input_audio_buffer.append"]
    assert kinds == ["session.update", "input_audio_buffer.commit", "response.create"]
    received = sim.connections[0].received
    commit = next(i for i, f in enumerate(received) if f["type"] == "input_audio_buffer.commit")
    assert all(f["type"] != "input_audio_buffer.append" for f in received[commit:])
    assert rec.of("response-done")[0].status == "completed"
    assert kit.server_errors(sim) == []


async def test_interrupted_response_cancels_its_unanswered_tool_call(kit: Any) -> None:
    # the call shares its response with speech that follows it, as on the GA service, so the
    # caller's barge-in during that speech cancels a response whose call is still unanswered
    say_after = "Let me look that up for you, it will only take a moment. " * 4
    script = SimScript(
        reply_text="Okay.", speed=1.0, tool_call=ToolCallScript(on_turn=1, say_after=say_after)
    )
    async with OpenAISimulator(script, validate=True) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(tools=[WEATHER]))
        await kit.say(client)
        await rec.wait_count("tool-call")
        await kit.say(client)  # the caller talks before the tool result is sent
        await rec.wait_count("tool-call-cancelled")
        (call,) = rec.of("tool-call")
        client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="late")])
        await rec.wait_count("response-done", 2)
        await client.disconnect()

    (cancelled,) = rec.of("tool-call-cancelled")
    assert cancelled.call_ids == [call.call_id]
    assert [d.status for d in rec.of("response-done")] == ["cancelled", "completed"]
    assert not [
        f
        for f in kit.client_frames(sim, "conversation.item.create")
        if f["item"]["type"] == "function_call_output"
    ]  # the late result was dropped
    assert len(kit.client_frames(sim, "response.create")) == 0  # the new turn answered itself
    assert kit.server_errors(sim) == []
    assert sim.validation_errors == []
