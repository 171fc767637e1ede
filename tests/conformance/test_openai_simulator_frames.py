"""Every frame the OpenAI simulator sends validates against the openai SDK's server-event union.

Scripted sessions over loopback with a raw WebSocket client cover a full VAD turn, the tool
round trip, barge-in, truncation, cancellation, manual turns, G.711, auth and every error path.
Each simulator runs with ``validate=True`` (validation on send); at teardown every recorded frame
is validated again with the strict recipe plus the undeclared-field check, and the simulator
must have logged no internal error.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from protocol.audio import pcm16_to_mulaw
from protocol.errors import SessionTimeout
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript
from providers.simulator.model import synthesize_speech
from providers.simulator.openai_schema import validate_server_event

from ..support.timing import scaled

#: every wait in this file scales with this one constant
TIMEOUT = 5.0
KEY = "sk-test"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}

AUDIO_REPLY = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    # output_audio.delta / output_audio_transcript.delta interleaved here
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
DELTAS = {"response.output_audio.delta", "response.output_audio_transcript.delta"}


def speech(ms: int, seed: int = 7) -> bytes:
    return synthesize_speech(ms, seed)


def silence(ms: int) -> bytes:
    return bytes(48 * ms)


class Client:
    """A raw GA client: sends events, and waits for server events by type."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._seen = 0

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def audio(self, pcm: bytes, frame_bytes: int = 960) -> None:
        for start in range(0, len(pcm), frame_bytes):
            chunk = base64.b64encode(pcm[start : start + frame_bytes]).decode()
            await self.send("input_audio_buffer.append", audio=chunk)

    async def next(self, kind: str) -> dict[str, Any]:
        """The next not-yet-consumed event of ``kind`` (events before it stay recorded)."""
        async with asyncio.timeout(scaled(TIMEOUT)):
            while True:
                for index in range(self._seen, len(self.events)):
                    if self.events[index]["type"] == kind:
                        self._seen = index + 1
                        return self.events[index]
                event = json.loads(await self.ws.recv())
                self.events.append(event)

    def types(self, start: int = 0) -> list[str]:
        return [e["type"] for e in self.events[start:]]


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(SimScript(speed=0), validate=True) as simulator:
        yield simulator
        assert_all_frames_valid(simulator)


def assert_all_frames_valid(simulator: OpenAISimulator) -> None:
    assert simulator.validation_errors == []
    assert simulator.internal_errors == []
    for conn in simulator.connections:
        for frame in conn.sent:
            validate_server_event(frame)


def connect(
    simulator: OpenAISimulator,
    headers: dict[str, str] | None = None,
    query: str = "?model=gpt-realtime",
) -> Any:
    return websockets.connect(
        simulator.url + query,
        additional_headers=headers if headers is not None else {"Authorization": f"Bearer {KEY}"},
        max_size=None,
    )


async def session(ws: ClientConnection, **fields: Any) -> Client:
    client = Client(ws)
    await client.next("session.created")
    if fields:
        await client.send("session.update", session={"type": "realtime", **fields})
        await client.next("session.updated")
    return client


def reply_segment(client: Client, response_id: str) -> list[str]:
    """The types of one response's events, in order, without its deltas."""
    out = []
    for event in client.events:
        rid = event.get("response_id") or event.get("response", {}).get("id")
        if event["type"] in ("conversation.item.added", "conversation.item.done"):
            owner = event["item"]["id"]
            rid = response_id if owner in _items_of(client, response_id) else None
        if rid == response_id and not event["type"].endswith(".delta"):
            out.append(event["type"])
    return out


def _items_of(client: Client, response_id: str) -> set[str]:
    return {
        e["item"]["id"]
        for e in client.events
        if e["type"] == "response.output_item.added" and e["response_id"] == response_id
    }


# ---- full turns ------------------------------------------------------------------------------


async def test_vad_turn_then_spoken_reply_in_the_verified_order(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    async with connect(sim) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "realtime"
        assert created["session"]["audio"]["input"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        client = Client(ws)
        await client.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
            },
        )
        updated = await client.next("session.updated")
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == (
            "gpt-4o-mini-transcribe"
        )
        await client.audio(silence(200) + speech(1000) + silence(400))
        done = await client.next("response.done")

    types = client.types()
    vad = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.delta",
    ]
    start = types.index(vad[0])
    assert types[start : start + len(vad)] == vad
    started = client.events[start]
    stopped = client.events[start + 1]
    assert started["audio_start_ms"] == 200
    assert 1200 <= stopped["audio_end_ms"] <= 1600
    assert isinstance(stopped["audio_end_ms"], int)
    completed = await_first(client, "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == sim.script.user_transcript

    assert types.index("rate_limits.updated") < types.index("response.created")
    response_id = done["response"]["id"]
    assert reply_segment(client, response_id) == AUDIO_REPLY
    deltas = [e for e in client.events if e["type"] in DELTAS]
    assert {e["type"] for e in deltas} == DELTAS
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in deltas if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) == 48 * 65 * len(sim.script.reply_text)  # PCM16 24 kHz
    transcript = "".join(
        e["delta"] for e in deltas if e["type"] == "response.output_audio_transcript.delta"
    )
    assert transcript == sim.script.reply_text
    assert done["response"]["status"] == "completed"
    assert done["response"]["usage"]["output_token_details"]["audio_tokens"] > 0
    assert done["response"]["output"][0]["content"][0]["transcript"] == sim.script.reply_text
    assert sim.turns == 1
    assert sim.audio_in == silence(200) + speech(1000) + silence(400)


def await_first(client: Client, kind: str) -> dict[str, Any]:
    return next(e for e in client.events if e["type"] == kind)


async def test_tool_call_round_trip(sim: OpenAISimulator) -> None:
    sim.script.tool_call = ToolCallScript(arguments={"city": "Paris"}, on_turn=1)
    async with connect(sim) as ws:
        client = await session(ws, tools=[TOOL])
        await client.audio(speech(600) + silence(400))
        args = await client.next("response.function_call_arguments.done")
        assert args["name"] == "get_weather"
        assert json.loads(args["arguments"]) == {"city": "Paris"}
        first = await client.next("response.done")
        assert first["response"]["output"][0]["type"] == "function_call"
        assert first["response"]["output"][0]["call_id"] == args["call_id"]
        segment = reply_segment(client, first["response"]["id"])
        assert segment == [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        assert "response.function_call_arguments.delta" in client.types()

        await client.send(
            "conversation.item.create",
            item={"type": "function_call_output", "call_id": args["call_id"], "output": "sunny"},
        )
        added = await client.next("conversation.item.added")
        assert added["item"]["type"] == "function_call_output"
        await client.next("conversation.item.done")
        await client.send("response.create")
        transcript = await client.next("response.output_audio_transcript.done")
        assert "sunny" in transcript["transcript"]
        second = await client.next("response.done")
        assert second["response"]["status"] == "completed"
    kinds = [(i.kind, i.role) for i in sim.connections[0].model.conversation.items]
    assert kinds == [
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]


async def test_manual_turns_commit_clear_and_response_create(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    async with connect(sim) as ws:
        client = await session(ws, audio={"input": {"turn_detection": None}})
        await client.send("input_audio_buffer.commit", event_id="evt_commit_1")
        empty = await client.next("error")
        assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
        assert empty["error"]["event_id"] == "evt_commit_1"
        await client.audio(speech(500))
        await client.send("input_audio_buffer.clear")
        await client.next("input_audio_buffer.cleared")
        await client.audio(speech(500) + silence(500))
        await client.send("input_audio_buffer.commit")
        committed = await client.next("input_audio_buffer.committed")
        await client.next("conversation.item.done")
        assert "input_audio_buffer.speech_started" not in client.types()
        assert "response.created" not in client.types()  # manual mode: no automatic reply
        await client.send("response.create")
        done = await client.next("response.done")
        assert done["response"]["status"] == "completed"
    assert sim.turns == 1
    assert sim.connections[0].model.conversation.items[0].id == committed["item_id"]


async def test_text_modality_and_out_of_band_response(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    async with connect(sim) as ws:
        client = await session(ws)
        await client.send(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            },
        )
        await client.next("conversation.item.done")
        await client.send("response.create", response={"output_modalities": ["text"]})
        text = await client.next("response.output_text.done")
        assert text["text"] == sim.script.reply_text
        done = await client.next("response.done")
        assert done["response"]["output"][0]["content"][0]["type"] == "output_text"
        assert "response.output_audio.delta" not in client.types()
        text_item = done["response"]["output"][0]["id"]
        await client.send(
            "conversation.item.truncate", item_id=text_item, content_index=0, audio_end_ms=0
        )
        assert (await client.next("error"))["error"]["code"] == "unsupported_content_type"
        before = len(sim.connections[0].model.conversation)
        mark = len(client.events)
        await client.send(
            "response.create",
            response={"conversation": "none", "metadata": {"purpose": "summary"}},
        )
        oob = await client.next("response.done")
        assert oob["response"]["metadata"] == {"purpose": "summary"}
        assert "conversation.item.added" not in client.types(mark)
        assert len(sim.connections[0].model.conversation) == before


async def test_g711_input_and_output(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    sim.script.reply_audio_ms = 1000
    async with connect(sim) as ws:
        client = await session(
            ws,
            audio={
                "input": {"format": {"type": "audio/pcmu"}},
                "output": {"format": {"type": "audio/pcmu"}},
            },
        )
        caller = np.frombuffer(speech(800), dtype="<i2")[::3]  # 8 kHz
        ulaw = pcm16_to_mulaw(caller.tobytes() + bytes(2 * 8 * 500))
        for start in range(0, len(ulaw), 160):
            chunk = base64.b64encode(ulaw[start : start + 160]).decode()
            await client.send("input_audio_buffer.append", audio=chunk)
        await client.next("input_audio_buffer.speech_stopped")
        await client.next("response.done")
    out = b"".join(
        base64.b64decode(e["delta"])
        for e in client.events
        if e["type"] == "response.output_audio.delta"
    )
    assert len(out) == 8000  # 1 s of 8 kHz G.711, one byte per sample
    assert len(sim.connections[0].audio_in) == 2 * len(ulaw)  # decoded to PCM16 at 8 kHz


# ---- barge-in, truncation, cancellation ----------------------------------------------------------


async def test_barge_in_cancels_and_truncate_is_checked(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    sim.script.speed = 10.0
    sim.script.reply_audio_ms = 5000  # ~0.5 s on the wire at 10x
    async with connect(sim) as ws:
        client = await session(ws)
        await client.audio(speech(500) + silence(400))
        first_delta = await client.next("response.output_audio.delta")
        item_id = first_delta["item_id"]
        await client.audio(speech(400))  # the caller talks over the reply
        started = await client.next("input_audio_buffer.speech_started")
        done = await client.next("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }
        assert done["response"]["output"][0]["status"] == "incomplete"
        assert client.events.index(started) < client.events.index(done)

        generated = sum(
            len(base64.b64decode(e["delta"])) // 48
            for e in client.events
            if e["type"] == "response.output_audio.delta" and e["item_id"] == item_id
        )
        assert 0 < generated < 5000
        await client.send(
            "conversation.item.truncate",
            item_id=item_id,
            content_index=0,
            audio_end_ms=generated + 500,
        )
        too_long = await client.next("error")
        assert too_long["error"]["code"] == "invalid_value"
        assert too_long["error"]["message"] == (
            f"Audio content of {generated}ms is already shorter than {generated + 500}ms"
        )
        await client.send(
            "conversation.item.truncate",
            item_id=item_id,
            content_index=0,
            audio_end_ms=generated // 2,
        )
        truncated = await client.next("conversation.item.truncated")
        assert truncated["audio_end_ms"] == generated // 2
        user_item = client.events[client.types().index("input_audio_buffer.committed")]["item_id"]
        await client.send(
            "conversation.item.truncate", item_id=user_item, content_index=0, audio_end_ms=0
        )
        unsupported = await client.next("error")
        assert unsupported["error"]["code"] == "unsupported_content_type"
        await client.audio(silence(400))  # the interruption ends: a new turn and reply
        await client.next("response.created")
    memory = sim.connections[0].model.conversation.get(item_id)
    assert memory is not None and memory.truncated_ms == generated // 2


async def test_truncating_the_item_being_generated_cancels_its_response(
    sim: OpenAISimulator,
) -> None:
    sim.script.tool_call = None
    sim.script.speed = 10.0
    sim.script.reply_audio_ms = 5000
    async with connect(sim) as ws:
        client = await session(ws, audio={"input": {"turn_detection": None}})
        await client.send("response.create")
        item_id = (await client.next("response.output_audio.delta"))["item_id"]
        await client.send(
            "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=50
        )
        done = await client.next("response.done")
        truncated = await client.next("conversation.item.truncated")
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        assert client.events.index(done) < client.events.index(truncated)
        assert truncated["audio_end_ms"] == 50


async def test_interrupt_response_false_keeps_the_reply_going(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    sim.script.speed = 10.0
    sim.script.reply_audio_ms = 3000
    async with connect(sim) as ws:
        detection = {"type": "server_vad", "interrupt_response": False}
        client = await session(ws, audio={"input": {"turn_detection": detection}})
        await client.audio(speech(500) + silence(400))
        await client.next("response.output_audio.delta")
        await client.audio(speech(300) + silence(400))
        second = await client.next("input_audio_buffer.committed")  # the second turn
        done = await client.next("response.done")
        assert client.events.index(second) < client.events.index(done)  # it came mid-reply
        assert done["response"]["status"] == "completed"
        assert "input_audio_buffer.speech_started" in client.types()


async def test_response_cancel_and_active_response_errors(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    sim.script.speed = 10.0
    sim.script.reply_audio_ms = 5000
    async with connect(sim) as ws:
        client = await session(ws, audio={"input": {"turn_detection": None}})
        await client.send("response.cancel", event_id="evt_c0")
        not_active = await client.next("error")
        assert not_active["error"]["code"] == "response_cancel_not_active"
        assert not_active["error"]["event_id"] == "evt_c0"
        await client.send("response.create")
        created = await client.next("response.created")
        await client.send("response.create", event_id="evt_rc2")
        busy = await client.next("error")
        assert busy["error"]["code"] == "conversation_already_has_active_response"
        assert created["response"]["id"] in busy["error"]["message"]
        await client.send("response.cancel", response_id=created["response"]["id"])
        done = await client.next("response.done")
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        assert done["response"]["status"] == "cancelled"
        await client.send("response.cancel")
        again = await client.next("error")
        assert again["error"]["code"] == "response_cancel_not_active"


# ---- conversation items ------------------------------------------------------------------------


async def test_conversation_item_create_delete_retrieve(sim: OpenAISimulator) -> None:
    async with connect(sim) as ws:
        client = await session(ws)

        async def create(item: dict[str, Any], **extra: Any) -> dict[str, Any]:
            await client.send("conversation.item.create", item=item, **extra)
            added = await client.next("conversation.item.added")
            done = await client.next("conversation.item.done")
            assert added["item"] == done["item"]
            return added

        first = await create(
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello"}],
            }
        )
        assert first["previous_item_id"] is None
        second = await create(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hi there"}],
            }
        )
        assert second["previous_item_id"] == first["item"]["id"]
        system = await create(
            {
                "type": "message",
                "id": "sys_1",
                "role": "system",
                "content": [{"type": "input_text", "text": "be brief"}],
            },
            previous_item_id="root",
        )
        assert system["item"]["id"] == "sys_1" and system["previous_item_id"] is None
        await client.send("conversation.item.retrieve", item_id=second["item"]["id"])
        retrieved = await client.next("conversation.item.retrieved")
        assert retrieved["item"]["content"][0] == {"type": "output_text", "text": "hi there"}
        await client.send("conversation.item.delete", item_id="sys_1")
        assert (await client.next("conversation.item.deleted"))["item_id"] == "sys_1"
        await client.send("conversation.item.delete", item_id="sys_1")
        missing = await client.next("error")
        assert (missing["error"]["code"], missing["error"]["param"]) == ("invalid_value", "item_id")
        await client.send(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "x"}],
            },
            previous_item_id="nope",
        )
        bad_previous = await client.next("error")
        assert bad_previous["error"]["param"] == "previous_item_id"
    conversation = sim.connections[0].model.conversation
    assert conversation.texts() == ["hello", "hi there"]


# ---- session.update ------------------------------------------------------------------------------


async def test_session_update_errors_leave_the_session_unchanged(sim: OpenAISimulator) -> None:
    async with connect(sim) as ws:
        client = await session(ws, instructions="Be brief.")
        bad = [
            ({"instructions": "x"}, "missing_required_parameter", "session.type"),
            (
                {"type": "realtime", "modalities": ["text"]},
                "unknown_parameter",
                "session.modalities",
            ),
            ({"type": "realtime", "instructions": ["x"]}, "invalid_type", "session.instructions"),
            (
                {
                    "type": "realtime",
                    "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}},
                },
                "invalid_value",
                "session.audio.output.format.rate",
            ),
        ]
        for session_update, code, param in bad:
            await client.send("session.update", session=session_update, event_id="evt_bad")
            error = await client.next("error")
            assert error["error"]["type"] == "invalid_request_error"
            assert (error["error"]["code"], error["error"]["param"]) == (code, param)
            assert error["error"]["event_id"] == "evt_bad"
        await client.send("session.update", session={"type": "realtime", "tools": [TOOL]})
        updated = await client.next("session.updated")
        assert updated["session"]["instructions"] == "Be brief."  # earlier update kept
        assert updated["session"]["tools"] == [TOOL]
        assert updated["session"]["audio"]["output"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        assert client.types().count("session.updated") == 2  # none for the rejected ones


async def test_voice_is_locked_after_assistant_audio(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    async with connect(sim) as ws:
        client = await session(ws, audio={"output": {"voice": "cedar"}})
        await client.send(
            "session.update", session={"type": "realtime", "audio": {"output": {"voice": "alloy"}}}
        )
        assert (await client.next("session.updated"))["session"]["audio"]["output"][
            "voice"
        ] == "alloy"
        await client.audio(speech(500) + silence(400))
        await client.next("response.done")
        await client.send(
            "session.update", session={"type": "realtime", "audio": {"output": {"voice": "marin"}}}
        )
        error = await client.next("error")
        assert error["error"]["code"] == "cannot_update_voice"
        await client.send(
            "session.update",
            session={
                "type": "realtime",
                "instructions": "x",
                "audio": {"output": {"voice": "alloy"}},
            },
        )
        same_voice = await client.next("session.updated")
        assert same_voice["session"]["instructions"] == "x"


# ---- malformed frames --------------------------------------------------------------------------


async def test_malformed_client_frames_get_errors_and_the_session_goes_on(
    sim: OpenAISimulator,
) -> None:
    async with connect(sim) as ws:
        client = await session(ws)
        await client.send_raw("{not json")
        assert (await client.next("error"))["error"]["code"] == "invalid_json"
        await client.send_raw(json.dumps({"audio": "AAAA"}))
        no_type = await client.next("error")
        assert (no_type["error"]["code"], no_type["error"]["param"]) == (
            "missing_required_parameter",
            "type",
        )
        await client.send("response.audio.delta")
        unknown = await client.next("error")
        assert (unknown["error"]["code"], unknown["error"]["param"]) == ("invalid_value", "type")
        await client.send_raw(b'{"type": "input_audio_buffer.clear"}')
        assert (await client.next("error"))["error"]["code"] == "invalid_frame"
        await client.send("input_audio_buffer.append", audio="***")
        assert (await client.next("error"))["error"]["param"] == "audio"
        await client.send("input_audio_buffer.append", audio=base64.b64encode(b"abc").decode())
        assert "whole 16-bit samples" in (await client.next("error"))["error"]["message"]
        await client.send(
            "conversation.item.truncate", item_id="x", content_index=0, audio_end_ms=1.5
        )
        assert (await client.next("error"))["error"]["code"] == "invalid_type"
        await client.send("output_audio_buffer.clear")
        assert (await client.next("error"))["error"]["code"] == "invalid_value"
        await client.send("input_audio_buffer.clear")
        await client.next("input_audio_buffer.cleared")  # still serving
    received = sim.connections[0].received
    assert {"_raw": "{not json"} in received


# ---- handshake and connection-level failures -------------------------------------------------


async def test_auth_and_handshake_rejections() -> None:
    async with OpenAISimulator(SimScript(api_key="sk-right"), validate=True) as sim:
        for headers, status, code in [
            ({}, 401, None),
            ({"Authorization": "Bearer sk-wrong"}, 401, "invalid_api_key"),
        ]:
            with pytest.raises(InvalidStatus) as info:
                async with connect(sim, headers):
                    pass
            response = info.value.response
            assert response.status_code == status
            body = json.loads(response.body)
            assert body["error"]["code"] == code
            assert "sk-wrong" not in response.body.decode()  # the key never echoes back
        with pytest.raises(InvalidStatus) as info:
            async with connect(sim, {"Authorization": "Bearer sk-right"}, query=""):
                pass
        assert info.value.response.status_code == 400
        azure = websockets.connect(
            f"ws://127.0.0.1:{sim.port}/openai/v1/realtime?model=my-deployment",
            additional_headers={"api-key": "sk-right"},
        )
        async with azure as ws:
            created = json.loads(await ws.recv())
            assert created["session"]["model"] == "my-deployment"
        assert [c.http_status for c in sim.rejected] == [401, 401, 400]
        assert sim.connections[0].request_headers["api-key"] == "sk-right"
        assert sim.connections[0].path == "/openai/v1/realtime"
        assert sim.connections[0].query == {"model": "my-deployment"}
        assert_all_frames_valid(sim)


async def test_beta_header_is_rejected_with_close_4000(sim: OpenAISimulator) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}
    async with connect(sim, headers) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert error["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4000
    await sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(TIMEOUT))
    assert sim.connections[0].close_code == 4000


async def test_session_cap_closes_with_1001() -> None:
    async with OpenAISimulator(SimScript(max_session_s=0.2), validate=True) as sim:
        async with connect(sim) as ws:
            await session(ws)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(scaled(TIMEOUT)):
                    while True:
                        await ws.recv()
            assert ws.close_code == 1001
            assert ws.close_reason == "Your session hit the maximum duration of 60 minutes."
        assert_all_frames_valid(sim)


@pytest.mark.parametrize(("code", "seen"), [(1011, 1011), (None, 1006)])
async def test_drop_closes_every_live_connection(
    sim: OpenAISimulator, code: int | None, seen: int
) -> None:
    async with connect(sim) as ws1, connect(sim) as ws2:
        await session(ws1)
        await session(ws2)
        await sim.drop(code=code, reason="simulated outage")
        for ws in (ws1, ws2):
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(scaled(TIMEOUT)):
                    await ws.recv()
            assert ws.close_code == seen
    assert all(conn.closed for conn in sim.connections)
    assert sim.live_connections == []


async def test_scripted_and_pushed_errors_are_recoverable(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    sim.script.errors_after_turn = {1: "rate_limit_exceeded"}
    async with connect(sim) as ws:
        client = await session(ws)
        await client.audio(speech(500) + silence(400))
        done = await client.next("response.done")
        error = await client.next("error")
        assert error["error"]["code"] == "rate_limit_exceeded"
        assert client.events.index(done) < client.events.index(error)
        await sim.send_error(code="server_error", message="The server had an error.")
        pushed = await client.next("error")
        assert pushed["error"]["message"] == "The server had an error."
        await client.audio(speech(500) + silence(400))  # the session goes on
        await client.next("response.done")
    assert sim.turns == 2
    assert [e["error"]["code"] for e in client.events if e["type"] == "error"] == [
        "rate_limit_exceeded",
        "server_error",
    ]


# ---- test API ---------------------------------------------------------------------------------


async def test_record_false_keeps_audio_frames_out() -> None:
    script = SimScript(speed=0, tool_call=None)
    async with OpenAISimulator(script, record=False, validate=True) as sim:
        async with connect(sim) as ws:
            client = await session(ws)
            await client.audio(speech(500) + silence(400))
            await client.next("response.done")
        conn = sim.connections[0]
        assert conn.audio_in == b"" and conn.audio_in_bytes == len(speech(500) + silence(400))
        assert all(f["type"] != "input_audio_buffer.append" for f in conn.received)
        assert all(f["type"] != "response.output_audio.delta" for f in conn.sent)
        assert any(f["type"] == "response.done" for f in conn.sent)
        assert sim.turns == 1
        assert_all_frames_valid(sim)


async def test_wait_for_times_out_with_a_clear_error(sim: OpenAISimulator) -> None:
    predicate: Callable[[OpenAISimulator], bool] = lambda s: s.turns > 0  # noqa: E731
    with pytest.raises(SessionTimeout, match=r"within 0.05 s"):
        await sim.wait_for(predicate, timeout=0.05)


async def test_reconnect_replay_lands_in_conversation_memory(sim: OpenAISimulator) -> None:
    sim.script.tool_call = None
    async with connect(sim) as ws:
        client = await session(ws)
        await client.audio(speech(500) + silence(400))
        await client.next("response.done")
    async with connect(sim) as ws:
        client = await session(ws)
        for role, kind, text in [
            ("user", "input_text", "caller speech"),
            ("assistant", "output_text", sim.script.reply_text),
        ]:
            await client.send(
                "conversation.item.create",
                item={"type": "message", "role": role, "content": [{"type": kind, "text": text}]},
            )
            await client.next("conversation.item.done")
    first, second = sim.connections
    assert second.model.conversation.texts() == first.model.conversation.texts()
    assert second.model.current_turn() == 1
