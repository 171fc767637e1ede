"""Barge-in truncation, request_response queuing, and the reconnect replay."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from protocol import (
    AudioFormat,
    ConfigError,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    ToolDefinition,
    TurnDetection,
)
from providers.openai.translator import HandshakeDone, OpenAITranslator

# ---------------------------------------------------------------------------- barge-in


def playing(wire: Any, translator: OpenAITranslator, chunks: int = 3) -> None:
    """r1 is active and has delivered ``chunks`` x 100 ms of audio for item i1 at t=0."""
    frames = [wire.response_created("r1"), wire.message_added("r1", "i1")]
    frames += [wire.audio("r1", "i1", nbytes=4800) for _ in range(chunks)]
    wire.drive(translator, frames, now=0.0)


def test_barge_in_truncates_to_the_played_time(wire: Any) -> None:
    translator = wire.live()
    playing(wire, translator)  # 300 ms received
    actions = translator.receive(wire.speech_started(), 0.1234)
    assert wire.names(actions) == ["speech-started", "interrupted"]
    assert wire.emitted(actions, "interrupted")[0].response_id == "r1"
    (truncate,) = wire.sent(actions)
    assert truncate == {
        "type": "conversation.item.truncate",
        "event_id": truncate["event_id"],
        "item_id": "i1",
        "content_index": 0,
        "audio_end_ms": 123,
    }
    assert isinstance(truncate["audio_end_ms"], int)


def test_truncate_is_clamped_to_the_audio_received(wire: Any) -> None:
    translator = wire.live()
    playing(wire, translator)  # 300 ms received, but 5 s have passed
    (truncate,) = wire.sent(translator.receive(wire.speech_started(), 5.0))
    assert truncate["audio_end_ms"] == 300  # 3 x 4800 bytes / 48


def test_g711_truncate_counts_eight_bytes_per_ms(wire: Any) -> None:
    fmt = AudioFormat(encoding="mulaw", sample_rate=8000)
    translator = wire.live(RealtimeSessionConfig(input_audio=fmt, output_audio=fmt))
    wire.drive(
        translator,
        [wire.response_created("r1"), wire.message_added("r1", "i1"), wire.audio("r1", "i1", 800)],
    )
    (truncate,) = wire.sent(translator.receive(wire.speech_started(), 9.0))
    assert truncate["audio_end_ms"] == 100


def test_truncate_uses_the_callers_playback_report(wire: Any) -> None:
    # 300 ms received at t=0; the phone confirmed 40 ms played at t=0.5 (its jitter buffer and
    # the network held the rest back): barge-in at t=0.625 truncates at 40 + 125 ms, not 300
    translator = wire.live()
    playing(wire, translator)
    translator.report_playback("r1", 40, 0.5)
    (truncate,) = wire.sent(translator.receive(wire.speech_started(), 0.625))
    assert truncate["audio_end_ms"] == 165


def test_a_report_for_another_response_is_ignored(wire: Any) -> None:
    translator = wire.live()
    playing(wire, translator)
    translator.report_playback("r0", 10, 0.0)  # a previous reply's position
    (truncate,) = wire.sent(translator.receive(wire.speech_started(), 0.1234))
    assert truncate["audio_end_ms"] == 123  # the wall-clock estimate


def test_a_reported_position_keeps_a_finished_reply_playing(wire: Any) -> None:
    # the reply was generated at once and is done; the wall clock says it ended (200 ms at
    # t=0, now t=1), but the phone reported only 50 ms played at t=0.875: still playing
    translator = wire.live()
    wire.drive(translator, wire.reply("r1", "i1"), now=0.0)
    translator.report_playback("r1", 50, 0.875)
    actions = translator.receive(wire.speech_started(), 1.0)
    assert wire.names(actions) == ["speech-started", "interrupted"]
    (truncate,) = wire.sent(actions)
    assert truncate["audio_end_ms"] == 175


def test_no_truncate_before_the_first_audio_frame(wire: Any) -> None:
    translator = wire.live()
    wire.drive(translator, [wire.response_created("r1"), wire.message_added("r1", "i1")])
    actions = translator.receive(wire.speech_started(), 1.0)
    assert wire.names(actions) == ["speech-started", "interrupted"]
    assert wire.sent(actions) == []


def test_no_interruption_when_nothing_is_playing(wire: Any) -> None:
    translator = wire.live()
    actions = translator.receive(wire.speech_started(), 0.0)
    assert wire.names(actions) == ["speech-started"]
    wire.drive(translator, wire.reply("r1", "i1"), now=0.0)  # 200 ms of audio at t=0
    later = translator.receive(wire.speech_started(), 10.0)  # long after playback ended
    assert wire.names(later) == ["speech-started"]
    assert wire.sent(later) == []


def test_barge_in_after_response_done_while_still_playing(wire: Any) -> None:
    translator = wire.live()
    wire.drive(translator, wire.reply("r1", "i1"), now=0.0)  # 200 ms generated at once
    actions = translator.receive(wire.speech_started(), 0.05)
    assert wire.names(actions) == ["speech-started", "interrupted"]
    (truncate,) = wire.sent(actions)
    assert truncate["audio_end_ms"] == 50


def test_trailing_deltas_of_an_interrupted_reply_are_dropped(wire: Any) -> None:
    translator = wire.live()
    playing(wire, translator)
    translator.receive(wire.speech_started(), 0.1)
    trailing = wire.drive(
        translator,
        [
            wire.audio("r1", "i1"),
            wire.transcript_delta("r1", "i1", "late words"),
            wire.audio_done("r1", "i1"),
        ],
        now=0.2,
    )
    assert wire.emitted(trailing, "audio") == []
    assert wire.emitted(trailing, "transcript") == []
    done = translator.receive(wire.response_done("r1", "cancelled"), 0.3)
    assert wire.names(done) == ["response-done"]


def test_interrupt_response_false_cancels_the_response_itself(wire: Any) -> None:
    translator = wire.live(
        RealtimeSessionConfig(turn_detection=TurnDetection(interrupt_response=False))
    )
    playing(wire, translator)
    cancel, truncate = wire.sent(translator.receive(wire.speech_started(), 0.1))
    assert truncate["type"] == "conversation.item.truncate"
    assert cancel == {
        "type": "response.cancel",
        "event_id": cancel["event_id"],
        "response_id": "r1",
    }


def test_recorded_barge_in(wire: Any) -> None:
    translator = OpenAITranslator(RealtimeSessionConfig())
    translator.handshake_frames(reconnect=False)
    frames = wire.load("barge_in")
    second_speech = [i for i, f in enumerate(frames) if f["type"].endswith("speech_started")][1]
    wire.drive(translator, frames[:second_speech], now=0.0)
    actions = translator.receive(frames[second_speech], 0.25)
    assert "interrupted" in wire.names(actions)
    (truncate,) = wire.sent(actions)
    received = sum(
        len(base64.b64decode(f["delta"]))
        for f in frames[:second_speech]
        if f["type"] == "response.output_audio.delta"
    )
    assert truncate["audio_end_ms"] == min(250, received // 48)
    rest = wire.drive(translator, frames[second_speech + 1 :], now=0.3)
    dones = wire.emitted(rest, "response-done")
    assert [d.status for d in dones] == ["cancelled", "completed"]


# ---------------------------------------------------------------------------- request_response


def test_request_response_with_instructions(wire: Any) -> None:
    translator = wire.live()
    (frame,) = wire.sent(translator.request_response("Greet the caller."))
    assert frame == {
        "type": "response.create",
        "event_id": frame["event_id"],
        "response": {"instructions": "Greet the caller."},
    }
    (frame,) = wire.sent(wire.live().request_response(None))
    assert "response" not in frame


def test_request_response_is_queued_behind_the_active_response(wire: Any) -> None:
    translator = wire.live()
    translator.receive(wire.response_created("r1"), 0.0)
    assert wire.sent(translator.request_response("first")) == []
    assert wire.sent(translator.request_response("second")) == []
    (first,) = wire.sent(translator.receive(wire.response_done("r1"), 0.0))
    assert first["response"]["instructions"] == "first"
    translator.receive(wire.response_created("r2"), 0.0)
    (second,) = wire.sent(translator.receive(wire.response_done("r2"), 0.0))
    assert second["response"]["instructions"] == "second"


def test_request_response_waits_for_the_one_already_requested(wire: Any) -> None:
    translator = wire.live()
    assert len(wire.sent(translator.request_response("a"))) == 1
    assert wire.sent(translator.request_response("b")) == []  # a not created yet


def test_request_response_waits_while_the_caller_talks(wire: Any) -> None:
    translator = wire.live()
    translator.receive(wire.speech_started(), 0.0)
    assert wire.sent(translator.request_response("x")) == []
    wire.drive(translator, [wire.speech_stopped(), wire.response_created("auto")])
    (frame,) = wire.sent(translator.receive(wire.response_done("auto"), 0.0))
    assert frame["response"]["instructions"] == "x"


@pytest.mark.parametrize(("nbytes", "commits"), [(4800, 1), (4000, 0)])
def test_manual_mode_commits_at_least_100_ms(wire: Any, nbytes: int, commits: int) -> None:
    translator = wire.live(RealtimeSessionConfig(turn_detection=TurnDetection(mode="manual")))
    translator.audio_pushed(nbytes)
    frames = wire.sent(translator.request_response(None))
    assert [f["type"] for f in frames] == ["input_audio_buffer.commit"] * commits + [
        "response.create"
    ]


def test_audio_frame_is_a_valid_append(wire: Any) -> None:
    frame = wire.live().audio_frame(b"\x01\x02" * 10)
    wire.client_ok(frame)
    assert frame["type"] == "input_audio_buffer.append"


# ---------------------------------------------------------------------------- reconnect


def conversation(wire: Any) -> OpenAITranslator:
    translator = wire.live(
        RealtimeSessionConfig(instructions="be nice", tools=[ToolDefinition(name="lookup")])
    )
    frames = [wire.committed("u1"), *wire.user_transcript("u1", "Hello")]
    frames += wire.reply("r1", "i1", text="Hi, how can I help?")
    frames += [wire.committed("u2"), *wire.user_transcript("u2", "Look it up")]
    frames += [
        wire.response_created("r2"),
        wire.call_added("r2", "c1", name="lookup"),
        wire.args_done("r2", "c1", arguments='{"q": "x"}', name="lookup"),
        wire.response_done("r2"),
    ]
    wire.drive(translator, frames)
    translator.tool_responses([RealtimeToolResponse(call_id="c1", output={"a": 1})])
    return translator


def test_replay_recreates_the_conversation_in_order(wire: Any) -> None:
    translator = conversation(wire)
    translator.receive(wire.response_created("r3"), 0.0)  # the follow-up started
    wire.drive(
        translator, [wire.message_added("r3", "i3"), wire.transcript_delta("r3", "i3", "It ")]
    )
    reset = translator.reset_connection()
    # the reply cut by the connection loss ends with its partial text and a failed status
    assert wire.names(reset) == ["transcript", "response-done"]
    assert wire.emitted(reset, "transcript")[0].text == "It "
    assert wire.emitted(reset, "response-done")[0].status == "failed"

    frames = translator.handshake_frames(reconnect=True)
    for frame in frames:
        wire.client_ok(frame)
    assert frames[0]["type"] == "session.update"
    assert frames[0]["session"]["instructions"] == "be nice"
    items = [f["item"] for f in frames[1:]]
    assert items == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi, how can I help?"}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Look it up"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "x"}'},
        {"type": "function_call_output", "call_id": "c1", "output": '{"a":1}'},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "It "}],
        },
    ]
    assert translator.receive(wire.session_updated(), 0.0) == [HandshakeDone()]
    assert wire.sent(translator.after_handshake()) == []  # the follow-up already started


def test_pending_tool_call_survives_a_reconnect(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(tools=[ToolDefinition(name="lookup")]))
    wire.drive(
        translator,
        [
            wire.response_created("r1"),
            wire.call_added("r1", "c1", name="lookup"),
            wire.args_done("r1", "c1", name="lookup"),
        ],
    )
    translator.reset_connection()
    frames = translator.handshake_frames(reconnect=True)
    assert [f["item"]["type"] for f in frames[1:]] == ["function_call"]
    translator.receive(wire.session_updated(), 0.0)
    assert wire.sent(translator.after_handshake()) == []
    # the result arrives after the reconnect: output, then the single follow-up
    frames = wire.sent(translator.tool_responses([RealtimeToolResponse(call_id="c1", output=1)]))
    assert [f["type"] for f in frames] == ["conversation.item.create", "response.create"]


def test_requested_response_is_asked_again_on_the_new_connection(wire: Any) -> None:
    translator = wire.live()
    assert len(wire.sent(translator.request_response("hello"))) == 1
    translator.reset_connection()
    translator.handshake_frames(reconnect=True)
    translator.receive(wire.session_updated(), 0.0)
    (again,) = wire.sent(translator.after_handshake())
    assert again["response"] == {"instructions": "hello"}


def test_filter_held_keeps_only_what_the_handshake_did_not_cover(wire: Any) -> None:
    translator = conversation(wire)
    translator.reset_connection()
    translator.handshake_frames(reconnect=True)
    held = [
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c1", "output": "1"},
        },
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c9", "output": "2"},
        },
        {"type": "response.create"},
        {
            "type": "conversation.item.truncate",
            "item_id": "i1",
            "content_index": 0,
            "audio_end_ms": 5,
        },
        {"type": "session.update", "session": {"type": "realtime"}},
        {"type": "input_audio_buffer.commit"},
    ]
    kept = translator.filter_held(held)
    assert kept == [held[1], held[5]]


def test_replay_is_capped_to_the_newest_items(wire: Any) -> None:
    translator = wire.live(replay_max_chars=300)
    for n in range(10):
        wire.drive(
            translator, [wire.committed(f"u{n}"), *wire.user_transcript(f"u{n}", f"line {n} " * 5)]
        )
    translator.reset_connection()
    items = [f["item"] for f in translator.handshake_frames(reconnect=True)[1:]]
    assert 0 < len(items) < 10
    assert items[-1]["content"][0]["text"].startswith("line 9")


def test_voice_lock_resets_with_a_new_connection(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(voice="marin"))
    wire.drive(translator, wire.reply("r1", "i1"))
    translator.reset_connection()
    translator.handshake_frames(reconnect=True)
    translator.receive(wire.session_updated(), 0.0)
    plan = translator.update(RealtimeSessionConfigUpdate(voice="cedar"))
    assert wire.emitted(plan.actions, "error") == []
    assert wire.sent(plan.actions)[0]["session"]["audio"]["output"]["voice"] == "cedar"


def test_idle_only_between_turns(wire: Any) -> None:
    translator = wire.live()
    assert translator.is_idle()
    translator.receive(wire.speech_started(), 0.0)
    assert not translator.is_idle()
    translator.receive(wire.response_created("r1"), 0.0)
    assert not translator.is_idle()
    translator.receive(wire.response_done("r1"), 0.0)
    assert translator.is_idle()


def test_exported_items_seed_another_translator(wire: Any) -> None:
    source = conversation(wire)
    items = source.replay_items()
    assert [i["type"] for i in items] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call_output",
    ]
    target = OpenAITranslator(RealtimeSessionConfig(tools=[ToolDefinition(name="lookup")]))
    target.import_items(items)
    frames = target.handshake_frames(reconnect=False)
    assert [f["item"] for f in frames[1:]] == items  # replayed on the first connection
    assert target.handshake_frames(reconnect=False)[1:] == []  # once


def test_import_rejects_unknown_items() -> None:
    translator = OpenAITranslator(RealtimeSessionConfig())
    with pytest.raises(ConfigError, match="item 1"):
        translator.import_items(
            [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}],
                },
                {"type": "mcp_call", "id": "x"},
            ]
        )
