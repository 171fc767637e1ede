"""``voicegrid simulate --script``: scenario files, their validation, the environment on top."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from protocol.errors import ConfigError
from providers.simulator import SimScript, ToolCallScript
from providers.simulator.scenario import SimScenario, load_scenario, scenario_script
from voicegrid.cli import build_parser
from voicegrid.simulate import run, script_from_env

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "simulator"


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "scenario.json"
    path.write_bytes(orjson.dumps(data))
    return path


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_scenario_loads(path: Path) -> None:
    assert isinstance(load_scenario(path), SimScript)


def test_the_tool_call_example_is_what_it_says() -> None:
    script = load_scenario(EXAMPLES / "tool-call.json")
    assert script.tool_call == ToolCallScript(
        name="get_weather", arguments={"city": "Paris"}, on_turn=1
    )
    assert script.user_transcript == "What is the weather in Paris?"


def test_an_empty_scenario_is_the_default_script() -> None:
    assert repr(scenario_script(SimScenario())) == repr(SimScript())


def test_every_script_field_can_be_set(tmp_path: Path) -> None:
    script = load_scenario(
        write(
            tmp_path,
            {
                "reply_text": "Hi",
                "user_transcript": "Hello",
                "reply_audio_ms": 900,
                "speed": 0,
                "chunk_ms": 20,
                "vad_threshold_rms": 300,
                "silence_ms": 500,
                "tool_call": None,
                "errors_after_turn": {"2": "server_error"},
                "go_away_after_s": 3.5,
                "go_away_time_left_s": 2,
                "max_session_s": 60,
            },
        )
    )
    assert (script.reply_text, script.user_transcript, script.reply_audio_ms) == (
        "Hi",
        "Hello",
        900,
    )
    assert (script.speed, script.chunk_ms, script.vad_threshold_rms, script.silence_ms) == (
        0,
        20,
        300,
        500,
    )
    assert script.tool_call is None
    assert script.errors_after_turn == {2: "server_error"}
    assert (script.go_away_after_s, script.go_away_time_left_s, script.max_session_s) == (
        3.5,
        2,
        60,
    )
    # every SimScript field but the secret has a scenario field
    assert set(SimScript().__dict__) - {"api_key"} <= set(SimScenario.model_fields)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"speed": -1}, "speed: Input should be greater than or equal to 0 (got -1)"),
        ({"chunk_ms": 0}, "chunk_ms"),
        ({"tool_call": {"on_turn": -2}}, "tool_call.on_turn"),
        ({"tool_call": {"nme": "x"}}, "tool_call.nme: Extra inputs are not permitted"),
        ({"errors_after_turn": {"0": "x"}}, "turns [0] are invalid; expected turns >= 1"),
        ({"errors_after_turn": {"one": "x"}}, "errors_after_turn.one"),
        ({"reply_txt": "x"}, "reply_txt: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_is_named(tmp_path: Path, data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match="scenario file") as info:
        load_scenario(write(tmp_path, data))
    assert needle in str(info.value)


def test_a_secret_in_a_scenario_is_refused_and_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VOICEGRID_SIM_API_KEY") as info:
        load_scenario(write(tmp_path, {"api_key": "sk-very-secret"}))
    assert "sk-very-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"{nope", "is not JSON"), (b"[1, 2]", "holds a JSON list; expected an object")],
)
def test_a_file_that_is_not_a_json_object_is_named(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        load_scenario(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read scenario file .*missing\.json"):
        load_scenario(tmp_path / "missing.json")


def test_the_environment_overrides_the_file() -> None:
    base = load_scenario(EXAMPLES / "tool-call.json")
    script = script_from_env(
        {"VOICEGRID_SIM_SPEED": "0", "VOICEGRID_SIM_API_KEY": "sk-sim"}, base=base
    )
    assert (script.speed, script.api_key) == (0.0, "sk-sim")
    assert script.tool_call is not None and script.tool_call.name == "get_weather"


def test_the_command_line_takes_a_script_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["simulate", "--script", str(EXAMPLES / "tool-call.json")])
    assert args.script.endswith("tool-call.json")
    bad = write(tmp_path, {"speed": "fast"})
    code = run(argparse.Namespace(protocol="openai", host="127.0.0.1", port=0, script=str(bad)))
    assert code == 2
    err = capsys.readouterr().err
    assert "voicegrid simulate: scenario file" in err and "speed" in err and "'fast'" in err
