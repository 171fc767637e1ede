"""Config models: defaults, validation messages, partial updates."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocol import (
    AudioFormat,
    ConfigError,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    ToolDefinition,
    TurnDetection,
    parse_config,
    parse_update,
)

WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def test_defaults_are_a_usable_session() -> None:
    cfg = RealtimeSessionConfig()
    assert cfg.input_audio == AudioFormat(encoding="pcm16", sample_rate=24000)
    assert cfg.turn_detection.mode == "server_vad"
    assert cfg.tools == []
    assert cfg.tool_choice == "auto"


def test_models_are_frozen() -> None:
    cfg = RealtimeSessionConfig(instructions="a")
    with pytest.raises(ValidationError):
        cfg.instructions = "b"  # type: ignore[misc]


def test_tool_choice_must_name_a_tool() -> None:
    assert RealtimeSessionConfig(tools=[WEATHER], tool_choice="get_weather").tool_choice
    with pytest.raises(ConfigError, match="tool_choice 'nope' is invalid"):
        parse_config({"tools": [WEATHER.model_dump()], "tool_choice": "nope"})


def test_duplicate_tool_names_are_named() -> None:
    with pytest.raises(ConfigError, match=r"duplicated: \['get_weather'\]"):
        parse_config({"tools": [WEATHER.model_dump(), WEATHER.model_dump()]})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 3.5, "temperature 3.5 is out of range"),
        ("max_output_tokens", 0, "max_output_tokens 0 is out of range"),
        ("input_audio", {"encoding": "mp3"}, "input_audio.encoding"),
        ("instructions", 5, "instructions"),
        ("unknown_field", 1, "unknown_field"),
    ],
)
def test_bad_values_name_the_field_and_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({field: value})


def test_bad_tool_name_is_explained() -> None:
    with pytest.raises(ValidationError, match="tool name 'get weather' is invalid"):
        ToolDefinition(name="get weather")


def test_tool_parameters_must_be_an_object_schema() -> None:
    with pytest.raises(ValidationError, match="type 'object'"):
        ToolDefinition(name="f", parameters={"type": "string"})


def test_turn_detection_ranges() -> None:
    with pytest.raises(ValidationError, match="threshold"):
        TurnDetection(threshold=1.5)


def test_parse_config_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="got list"):
        parse_config([])  # type: ignore[arg-type]


def test_partial_update_keeps_unnamed_fields() -> None:
    cfg = RealtimeSessionConfig(instructions="be brief", voice="marin", tools=[WEATHER])
    merged = cfg.merged(parse_update({"instructions": "be verbose"}))
    assert merged.instructions == "be verbose"
    assert merged.voice == "marin"
    assert merged.tools == [WEATHER]
    assert cfg.changed_fields(merged) == {"instructions"}


def test_empty_update_is_identity() -> None:
    cfg = RealtimeSessionConfig(instructions="x")
    assert cfg.merged(RealtimeSessionConfigUpdate()) is cfg


def test_update_that_breaks_the_config_is_rejected() -> None:
    cfg = RealtimeSessionConfig(tools=[WEATHER], tool_choice="get_weather")
    with pytest.raises(ConfigError, match="tool_choice"):
        cfg.merged(parse_update({"tools": []}))


def test_update_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        parse_update({"temperature": -1})


def test_tool_response_output_is_any_json() -> None:
    r = RealtimeToolResponse(call_id="c1", output={"temp": 21})
    assert r.output == {"temp": 21}
    with pytest.raises(ValidationError, match="call_id"):
        RealtimeToolResponse(call_id="", output=1)
