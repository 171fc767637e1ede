"""Tool calls: tool-call events, outputs, the single follow-up response.create, cancellation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import ConfigError, RealtimeSessionConfig, RealtimeToolResponse, ToolDefinition
from providers.openai.translator import OpenAITranslator

CONFIG = RealtimeSessionConfig(tools=[ToolDefinition(name="get_weather")])


def call_turn(wire: Any, rid: str = "r1", calls: tuple[str, ...] = ("c1",)) -> list[dict[str, Any]]:
    frames = [wire.response_created(rid)]
    for call in calls:
        frames += [wire.call_added(rid, call), wire.args_done(rid, call)]
    return frames


def answer(translator: OpenAITranslator, *calls: str, output: Any = None) -> list[Any]:
    return translator.tool_responses(
        [
            RealtimeToolResponse(call_id=c, output=output if output is not None else {"ok": c})
            for c in calls
        ]
    )


def test_recorded_tool_round_trip(wire: Any) -> None:
    translator = OpenAITranslator(CONFIG)
    translator.handshake_frames(reconnect=False)
    frames = wire.load("tool_call")
    first_done = next(i for i, f in enumerate(frames) if f["type"] == "response.done")
    actions = wire.drive(translator, frames[: first_done + 1])
    translator.after_handshake()
    (call,) = wire.emitted(actions, "tool-call")
    assert call.name == "get_weather"
    assert call.arguments == {"city": "Paris"}
    assert wire.sent(actions) == []
    out = answer(translator, call.call_id, output={"sky": "sunny"})
    item, create = wire.sent(out)
    assert item["item"] == {
        "type": "function_call_output",
        "call_id": call.call_id,
        "output": json.dumps({"sky": "sunny"}, separators=(",", ":")),
    }
    assert create["type"] == "response.create"
    rest = wire.drive(translator, frames[first_done + 1 :])
    assert wire.sent(rest) == []  # the follow-up reply needs nothing more
    assert wire.names(rest)[-1] == "response-done"


def test_tool_call_fires_at_arguments_done_with_parsed_arguments(wire: Any) -> None:
    translator = wire.live(CONFIG)
    actions = translator.receive(wire.response_created("r1"), 0.0)
    actions += translator.receive(wire.call_added("r1", "c1"), 0.0)
    assert wire.emitted(actions, "tool-call") == []
    (call,) = wire.emitted(translator.receive(wire.args_done("r1", "c1"), 0.0), "tool-call")
    assert (call.call_id, call.name, call.arguments) == ("c1", "get_weather", {"city": "Paris"})
    # a repeated done does not fire twice
    assert wire.emitted(translator.receive(wire.args_done("r1", "c1"), 0.0), "tool-call") == []


def test_output_before_response_done_waits_for_it(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, call_turn(wire))
    early = answer(translator, "c1")
    assert [f["type"] for f in wire.sent(early)] == ["conversation.item.create"]
    done = translator.receive(wire.response_done("r1"), 0.0)
    assert [f["type"] for f in wire.sent(done)] == ["response.create"]
    # exactly one: nothing else is owed afterwards
    assert wire.sent(wire.drive(translator, [wire.response_created("r2")])) == []
    assert wire.sent(translator.receive(wire.response_done("r2"), 0.0)) == []


def test_parallel_calls_get_one_response_create_after_all_outputs(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire, calls=("c1", "c2")), wire.response_done("r1")])
    first = answer(translator, "c1")
    assert [f["type"] for f in wire.sent(first)] == ["conversation.item.create"]
    second = answer(translator, "c2")
    assert [f["type"] for f in wire.sent(second)] == [
        "conversation.item.create",
        "response.create",
    ]


def test_follow_up_waits_for_another_active_response(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(
        translator, [*call_turn(wire), wire.response_done("r1"), wire.response_created("r2")]
    )
    assert [f["type"] for f in wire.sent(answer(translator, "c1"))] == ["conversation.item.create"]
    # r2 started before the output was added: it does not cover it
    assert [f["type"] for f in wire.sent(translator.receive(wire.response_done("r2"), 0.0))] == [
        "response.create"
    ]


def test_automatic_response_after_the_output_covers_the_follow_up(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire), wire.response_done("r1"), wire.speech_started()])
    # the caller is talking: the server will create the next response itself
    assert [f["type"] for f in wire.sent(answer(translator, "c1"))] == ["conversation.item.create"]
    actions = wire.drive(
        translator,
        [
            wire.output_added("c1"),
            wire.speech_stopped(),
            wire.response_created("r2"),
            wire.response_done("r2"),
        ],
    )
    assert wire.sent(actions, "response.create") == []
    assert translator.is_idle()


def test_automatic_response_before_the_output_was_added_does_not_cover_it(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire), wire.response_done("r1"), wire.speech_started()])
    answer(translator, "c1")
    actions = wire.drive(translator, [wire.response_created("r2"), wire.output_added("c1")])
    assert wire.sent(actions) == []
    assert [f["type"] for f in wire.sent(translator.receive(wire.response_done("r2"), 0.0))] == [
        "response.create"
    ]


def test_cancelled_response_cancels_unanswered_calls(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, call_turn(wire, calls=("c1", "c2")))
    answer(translator, "c1")
    actions = translator.receive(wire.response_done("r1", "cancelled"), 0.0)
    (cancelled,) = wire.emitted(actions, "tool-call-cancelled")
    assert cancelled.call_ids == ["c2"]
    assert wire.sent(actions) == []  # the caller's new turn gets its own response
    late = answer(translator, "c2")
    assert wire.sent(late) == []  # the late result is dropped


def test_bad_arguments_are_an_error_and_answered_for_the_model(wire: Any) -> None:
    translator = wire.live(CONFIG)
    actions = wire.drive(
        translator,
        [
            wire.response_created("r1"),
            wire.call_added("r1", "c1"),
            wire.args_done("r1", "c1", arguments='{"city": '),
        ],
    )
    (error,) = wire.emitted(actions, "error")
    assert error.code == "invalid_tool_arguments"
    assert error.recoverable is True
    assert wire.emitted(actions, "tool-call") == []
    (output,) = wire.sent(actions)
    assert output["item"]["call_id"] == "c1"
    assert "error" in json.loads(output["item"]["output"])
    done = translator.receive(wire.response_done("r1"), 0.0)
    assert [f["type"] for f in wire.sent(done)] == ["response.create"]


def test_non_object_arguments_are_rejected(wire: Any) -> None:
    translator = wire.live(CONFIG)
    actions = wire.drive(
        translator,
        [wire.response_created("r1"), wire.args_done("r1", "c1", arguments="[1, 2]")],
    )
    assert wire.emitted(actions, "error")[0].code == "invalid_tool_arguments"


def test_outputs_are_encoded_as_strings(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire, calls=("a", "b", "c")), wire.response_done("r1")])
    frames = wire.sent(
        translator.tool_responses(
            [
                RealtimeToolResponse(call_id="a", output="plain text"),
                RealtimeToolResponse(call_id="b", output=[1, 2]),
                RealtimeToolResponse(call_id="c", output="no such city", is_error=True),
            ]
        ),
        "conversation.item.create",
    )
    assert [f["item"]["output"] for f in frames] == [
        "plain text",
        "[1,2]",
        '{"error":"no such city"}',
    ]


def test_duplicate_result_is_dropped(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire), wire.response_done("r1")])
    assert len(wire.sent(answer(translator, "c1"))) == 2
    assert wire.sent(answer(translator, "c1")) == []


def test_result_for_an_unknown_call_is_sent_and_followed_up(wire: Any) -> None:
    translator = wire.live(CONFIG)
    frames = wire.sent(answer(translator, "elsewhere"))
    assert [f["type"] for f in frames] == ["conversation.item.create", "response.create"]


def test_conflict_error_requeues_the_follow_up(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire), wire.response_done("r1")])
    (_, create) = wire.sent(answer(translator, "c1"))
    conflict = wire.error(
        "conversation_already_has_active_response",
        "Conversation already has an active response",
        event_id=create["event_id"],
    )
    actions = translator.receive(conflict, 0.0)
    assert actions == []  # handled: not surfaced as an error
    assert wire.sent(translator.receive(wire.response_created("r2"), 0.0)) == []
    again = translator.receive(wire.response_done("r2"), 0.0)
    assert [f["type"] for f in wire.sent(again)] == ["response.create"]


def test_other_response_create_errors_are_reported_once(wire: Any) -> None:
    translator = wire.live()
    (create,) = wire.sent(translator.request_response("x"))
    actions = translator.receive(
        wire.error("invalid_value", "bad", event_id=create["event_id"]), 0.0
    )
    assert wire.emitted(actions, "error")[0].code == "invalid_value"
    assert wire.sent(actions) == []  # not retried
    assert translator.is_idle()


def test_unserializable_output_raises_before_anything_changes(wire: Any) -> None:
    translator = wire.live(CONFIG)
    wire.drive(translator, [*call_turn(wire, calls=("a", "b")), wire.response_done("r1")])
    with pytest.raises(ConfigError, match="not JSON-serializable"):
        translator.tool_responses(
            [
                RealtimeToolResponse(call_id="a", output="fine"),
                RealtimeToolResponse(call_id="b", output={1, 2}),
            ]
        )
    # nothing was marked answered: both can still be answered
    frames = wire.sent(answer(translator, "a", "b"))
    assert [f["type"] for f in frames] == [
        "conversation.item.create",
        "conversation.item.create",
        "response.create",
    ]
