"""Server events -> protocol events, driven by recorded and hand-built GA wire JSON."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from protocol import AudioFormat, ProviderProtocolError, RealtimeSessionConfig
from providers.openai.translator import OpenAITranslator

# Every GA server event type (``openai.types.realtime.RealtimeServerEvent``) and what the
# translator makes of it.
SILENT_TYPES = [
    "session.created",
    "rate_limits.updated",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "conversation.item.deleted",
    "conversation.item.truncated",
    "conversation.item.retrieved",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.function_call_arguments.delta",
]


def test_recorded_frames_are_valid_ga_server_events(wire: Any) -> None:
    for name in ("full_turn", "tool_call", "barge_in"):
        for frame in wire.load(name):
            wire.server_ok(frame)


def test_recorded_full_turn(wire: Any) -> None:
    translator = OpenAITranslator(RealtimeSessionConfig())
    translator.handshake_frames(reconnect=False)
    frames = wire.load("full_turn")
    actions = wire.drive(translator, frames)
    deltas = sum(f["type"] == "response.output_audio_transcript.delta" for f in frames)
    names = [n for n in wire.names(actions) if n != "audio"]
    assert names == [
        "speech-started",
        "speech-stopped",
        *["transcript"] * 3,  # user: two deltas and the final
        *["transcript"] * (deltas + 1),  # assistant: deltas and one final
        "response-done",
    ]
    user = [t for t in wire.emitted(actions, "transcript") if t.role == "user"]
    assert [(t.text, t.final) for t in user] == [
        ("caller ", False),
        ("speech", False),
        ("caller speech", True),
    ]
    assistant = [t for t in wire.emitted(actions, "transcript") if t.role == "assistant"]
    finals = [t for t in assistant if t.final]
    assert len(finals) == 1
    assert finals[0].text == "Sure, I can help with that."
    assert "".join(t.text for t in assistant if not t.final) == finals[0].text
    (done,) = wire.emitted(actions, "response-done")
    assert done.status == "completed"
    assert done.usage is not None and done.usage.total_tokens > 0
    audio = wire.emitted(actions, "audio")
    assert audio and all(a.sample_rate == 24000 for a in audio)
    assert all(a.response_id == done.response_id for a in audio)
    recorded = [
        base64.b64decode(f["delta"])
        for f in wire.load("full_turn")
        if f["type"] == "response.output_audio.delta"
    ]
    assert b"".join(a.data for a in audio) == b"".join(recorded)  # 24 kHz PCM: passthrough
    assert wire.sent(actions) == []  # nothing owed to the server in a plain turn


def test_speech_events_carry_the_audio_position(wire: Any) -> None:
    translator = wire.live()
    started = wire.emitted(translator.receive(wire.speech_started(ms=120), 0.0), "speech-started")
    stopped = wire.emitted(translator.receive(wire.speech_stopped(ms=950), 0.0), "speech-stopped")
    assert started[0].audio_ms == 120
    assert stopped[0].audio_ms == 950


def test_output_audio_is_converted_to_the_session_format(wire: Any) -> None:
    translator = wire.live(
        RealtimeSessionConfig(output_audio=AudioFormat(encoding="pcm16", sample_rate=16000))
    )
    actions = wire.drive(translator, wire.reply("r1", "i1"))
    audio = wire.emitted(actions, "audio")
    assert audio and all(a.sample_rate == 16000 for a in audio)
    total = sum(len(a.data) for a in audio)
    # two 100 ms deltas at 24 kHz become about 200 ms at 16 kHz (6400 bytes) after the flush
    assert abs(total - 6400) <= 64


def test_exactly_one_final_assistant_transcript_per_reply(wire: Any) -> None:
    translator = wire.live()
    frames = wire.reply("r1", "i1", text="One two three.")
    frames.insert(-1, wire.transcript_done("r1", "i1", "One two three."))  # duplicate done
    actions = wire.drive(translator, frames)
    finals = [t for t in wire.emitted(actions, "transcript") if t.final]
    assert [(t.role, t.text, t.item_id) for t in finals] == [("assistant", "One two three.", "i1")]


def test_cancelled_reply_gets_a_final_transcript_from_its_deltas(wire: Any) -> None:
    translator = wire.live()
    frames = [
        wire.response_created("r1"),
        wire.message_added("r1", "i1"),
        wire.transcript_delta("r1", "i1", "Hello "),
        wire.transcript_delta("r1", "i1", "wor"),
        wire.response_done(
            "r1", "cancelled", details={"type": "cancelled", "reason": "client_cancelled"}
        ),
    ]
    actions = wire.drive(translator, frames)
    finals = [t for t in wire.emitted(actions, "transcript") if t.final]
    assert [t.text for t in finals] == ["Hello wor"]
    (done,) = wire.emitted(actions, "response-done")
    assert done.status == "cancelled"


def test_output_transcription_off_suppresses_assistant_transcripts(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(output_transcription=False))
    actions = wire.drive(translator, wire.reply("r1", "i1"))
    assert not [t for t in wire.emitted(actions, "transcript") if t.role == "assistant"]
    assert translator.history() == [("assistant", "Hello there.")]  # still kept for replay


def test_user_transcript_deltas_then_one_final(wire: Any) -> None:
    translator = wire.live()
    frames = [wire.committed("u1"), *wire.user_transcript("u1", "Hi ", "there")]
    frames.append(frames[-1])  # a repeated completion is ignored
    actions = wire.drive(translator, frames)
    assert [(t.text, t.final) for t in wire.emitted(actions, "transcript")] == [
        ("Hi ", False),
        ("there", False),
        ("Hi there", True),
    ]


def test_user_transcript_after_the_response_keeps_conversation_order(wire: Any) -> None:
    translator = wire.live()
    frames = [wire.committed("u1"), *wire.reply("r1", "i1"), *wire.user_transcript("u1", "Hey")]
    wire.drive(translator, frames)
    assert translator.history() == [("user", "Hey"), ("assistant", "Hello there.")]


def test_transcription_failure_is_a_recoverable_error(wire: Any) -> None:
    frame = wire.server_ok(
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": "e1",
            "item_id": "u1",
            "content_index": 0,
            "error": {
                "type": "transcription_error",
                "code": "audio_unintelligible",
                "message": "?",
            },
        }
    )
    (error,) = wire.emitted(wire.live().receive(frame, 0.0), "error")
    assert error.code == "audio_unintelligible"
    assert error.recoverable is True


def test_failed_response_reports_its_error_and_status(wire: Any) -> None:
    frame = wire.response_done(
        "r1",
        "failed",
        details={
            "type": "failed",
            "error": {"type": "server_error", "code": "model_overloaded"},
        },
    )
    translator = wire.live()
    translator.receive(wire.response_created("r1"), 0.0)
    actions = translator.receive(frame, 0.0)
    assert wire.names(actions) == ["error", "response-done"]
    assert wire.emitted(actions, "error")[0].code == "model_overloaded"
    assert wire.emitted(actions, "response-done")[0].status == "failed"


@pytest.mark.parametrize(
    ("beta", "ga_field"),
    [
        ("response.audio.delta", "delta"),
        ("response.audio_transcript.delta", "delta"),
        ("response.text.delta", "delta"),
    ],
)
def test_beta_event_names_are_accepted(wire: Any, beta: str, ga_field: str) -> None:
    translator = wire.live()
    wire.drive(translator, [wire.response_created("r1"), wire.message_added("r1", "i1")])
    value = base64.b64encode(b"\x01\x00" * 240).decode() if "audio." in beta else "hi"
    frame = {
        "type": beta,
        "event_id": "e",
        "response_id": "r1",
        "item_id": "i1",
        "output_index": 0,
        "content_index": 0,
        ga_field: value,
    }
    actions = translator.receive(frame, 0.0)
    expected = "audio" if "audio." in beta else "transcript"
    assert wire.names(actions) == [expected]


def test_beta_transcript_done_and_item_created(wire: Any) -> None:
    translator = wire.live()
    wire.drive(translator, [wire.response_created("r1"), wire.message_added("r1", "i1")])
    done = {
        "type": "response.audio_transcript.done",
        "event_id": "e",
        "response_id": "r1",
        "item_id": "i1",
        "output_index": 0,
        "content_index": 0,
        "transcript": "Beta words.",
    }
    (final,) = wire.emitted(translator.receive(done, 0.0), "transcript")
    assert (final.text, final.final) == ("Beta words.", True)
    created = {
        "type": "conversation.item.created",
        "event_id": "e2",
        "previous_item_id": None,
        "item": {
            "id": "u9",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio"}],
        },
    }
    assert translator.receive(created, 0.0) == []
    wire.drive(translator, wire.user_transcript("u9", "late"))
    assert ("user", "late") in translator.history()


@pytest.mark.parametrize("kind", SILENT_TYPES)
def test_informational_events_produce_nothing(wire: Any, kind: str) -> None:
    samples = {
        f["type"]: f for name in ("full_turn", "tool_call", "barge_in") for f in wire.load(name)
    }
    frame = samples.get(kind) or {"type": kind, "event_id": "e"}
    translator = wire.live()
    assert translator.receive(frame, 0.0) == []


def test_unknown_event_types_are_ignored(wire: Any) -> None:
    assert wire.live().receive({"type": "response.future_thing", "x": 1}, 0.0) == []


@pytest.mark.parametrize(
    "frame",
    [
        {"no_type": True},
        {"type": 7},
        {"type": "response.created", "response": "nope"},
        {"type": "response.output_audio.delta", "item_id": "i", "response_id": "r", "delta": "@@@"},
        {"type": "response.function_call_arguments.done", "call_id": 5, "arguments": "{}"},
        {"type": "error"},
    ],
)
def test_malformed_events_raise_a_protocol_error(wire: Any, frame: dict[str, Any]) -> None:
    translator = wire.live()
    with pytest.raises(ProviderProtocolError):
        translator.receive(frame, 0.0)
    # the translator is still usable afterwards
    assert wire.names(wire.drive(translator, wire.reply("r1", "i1")))[-1] == "response-done"
