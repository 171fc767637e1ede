"""Request validation of the OpenAI simulator: the real service's error codes, params, wording."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import ProviderProtocolError
from providers.simulator.openai_schema import (
    CLIENT_EVENT_TYPES,
    Problem,
    check_client_event,
    validate_client_event,
    validate_server_event,
)


def update(session: Any) -> Problem | None:
    return check_client_event({"type": "session.update", "session": session})


def test_a_full_ga_session_update_is_accepted() -> None:
    session = {
        "type": "realtime",
        "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
        },
        "tools": [{"type": "function", "name": "get_weather", "description": "", "parameters": {}}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": "inf",
    }
    assert update(session) is None
    assert update({"type": "realtime", "audio": {"input": {"turn_detection": None}}}) is None


@pytest.mark.parametrize(
    ("session", "code", "param", "message"),
    [
        (
            {"instructions": "x"},
            "missing_required_parameter",
            "session.type",
            "Missing required parameter: 'session.type'.",
        ),
        (
            {"type": "realtime", "input_audio_format": "pcm16"},
            "unknown_parameter",
            "session.input_audio_format",
            "Unknown parameter: 'session.input_audio_format'.",
        ),
        (
            {"type": "realtime", "temperature": 0.8},
            "unknown_parameter",
            "session.temperature",
            "Unknown parameter: 'session.temperature'.",
        ),
        (
            {"type": "realtime", "instructions": 5},
            "invalid_type",
            "session.instructions",
            "Invalid type for 'session.instructions': expected a string, but got an integer "
            "instead.",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
            "Invalid value: 16000. Supported values are: 24000.",
        ),
        (
            {"type": "realtime", "audio": {"output": {"speed": 3}}},
            "decimal_above_max_value",
            "session.audio.output.speed",
            "Invalid 'session.audio.output.speed': decimal above maximum value. Expected a value "
            "<= 1.5, but got 3 instead.",
        ),
        (
            {"type": "transcription"},
            "invalid_value",
            "session.type",
            "Invalid value: 'transcription'. Supported values are: 'realtime'.",
        ),
        (
            {"type": "realtime", "output_modalities": ["audio", "text"]},
            "invalid_value",
            "session.output_modalities",
            None,
        ),
        (
            {
                "type": "realtime",
                "tools": [{"type": "function", "description": "d" * 1025, "name": "t"}],
            },
            "string_above_max_length",
            "session.tools[0].description",
            None,
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}},
            },
            "unknown_parameter",
            "session.audio.input.turn_detection.threshold",
            None,
        ),
        (
            {"type": "realtime", "max_output_tokens": 5000},
            "integer_above_max_value",
            "session.max_output_tokens",
            None,
        ),
        ("not an object", "invalid_type", "session", None),
    ],
)
def test_session_update_problems(session: Any, code: str, param: str, message: str | None) -> None:
    problem = update(session)
    assert problem is not None
    assert (problem.code, problem.param) == (code, param)
    if message is not None:
        assert problem.message == message


def test_event_level_problems() -> None:
    assert check_client_event({"audio": "AA=="}) == Problem(
        "missing_required_parameter", "Missing required parameter: 'type'.", "type"
    )
    unknown = check_client_event({"type": "response.audio.delta"})
    assert unknown is not None and unknown.code == "invalid_value" and unknown.param == "type"
    assert "'session.update'" in unknown.message
    extra = check_client_event({"type": "input_audio_buffer.commit", "foo": 1})
    assert extra is not None and (extra.code, extra.param) == ("unknown_parameter", "foo")
    missing = check_client_event({"type": "input_audio_buffer.append"})
    assert missing is not None and (missing.code, missing.param) == (
        "missing_required_parameter",
        "audio",
    )


def test_truncate_needs_integer_milliseconds() -> None:
    frame = {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0}
    problem = check_client_event({**frame, "audio_end_ms": 1500.5})
    assert problem == Problem(
        "invalid_type",
        "Invalid type for 'audio_end_ms': expected an integer, but got a decimal number instead.",
        "audio_end_ms",
    )
    assert check_client_event({**frame, "audio_end_ms": 1500}) is None
    negative = check_client_event({**frame, "audio_end_ms": -1})
    assert negative is not None and negative.code == "integer_below_min_value"


def test_item_shapes_and_roles() -> None:
    def create(item: dict[str, Any]) -> Problem | None:
        return check_client_event({"type": "conversation.item.create", "item": item})

    assert create({"type": "function_call_output", "call_id": "c", "output": "{}"}) is None
    assert (
        create(
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        )
        is None
    )
    no_output = create({"type": "function_call_output", "call_id": "c"})
    assert no_output is not None and no_output.param == "item.output"
    dict_output = create({"type": "function_call_output", "call_id": "c", "output": {"a": 1}})
    assert dict_output is not None and dict_output.code == "invalid_type"
    beta_text = create(
        {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "x"}]}
    )
    assert beta_text is not None and beta_text.param == "item.content[0].type"
    assistant_audio = create(
        {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "audio": ""}]}
    )
    assert assistant_audio is not None and assistant_audio.code == "invalid_value"


def test_every_ga_client_event_type_is_known() -> None:
    assert set(CLIENT_EVENT_TYPES) >= {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "response.create",
        "response.cancel",
    }


def test_sdk_oracle_rejects_bad_and_undeclared_fields() -> None:
    good = {
        "type": "conversation.item.truncated",
        "event_id": "e1",
        "item_id": "i1",
        "content_index": 0,
        "audio_end_ms": 100,
    }
    validate_server_event(good)
    with pytest.raises(ProviderProtocolError, match="audio_end_ms"):
        validate_server_event({**good, "audio_end_ms": "100ms"})
    with pytest.raises(ProviderProtocolError, match="audio_end_msec"):
        validate_server_event({**good, "audio_end_msec": 100})
    with pytest.raises(ProviderProtocolError, match=r"response\.audio\.delta"):
        validate_server_event({"type": "response.audio.delta", "event_id": "e", "delta": ""})
    validate_client_event({"type": "response.create"})
    with pytest.raises(ProviderProtocolError):
        validate_client_event({"type": "session.update", "session": {"modalities": ["text"]}})
