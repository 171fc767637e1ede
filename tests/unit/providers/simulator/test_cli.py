"""``voicegrid simulate`` configuration: environment overrides and protocol selection."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from protocol.errors import ConfigError
from providers.simulator import OpenAISimulator
from voicegrid.simulate import build_simulator, run, script_from_env


def test_environment_overrides_the_script() -> None:
    script = script_from_env(
        {
            "VOICEGRID_SIM_REPLY": "Hello caller.",
            "VOICEGRID_SIM_SPEED": "0",
            "VOICEGRID_SIM_CHUNK_MS": "20",
            "VOICEGRID_SIM_API_KEY": "sk-only",
        }
    )
    assert (script.reply_text, script.speed, script.chunk_ms, script.api_key) == (
        "Hello caller.",
        0.0,
        20,
        "sk-only",
    )
    assert script_from_env({}).speed == 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VOICEGRID_SIM_SPEED", "fast"),
        ("VOICEGRID_SIM_SPEED", "-1"),
        ("VOICEGRID_SIM_CHUNK_MS", "0"),
    ],
)
def test_bad_environment_values_are_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}='{value}'"):
        script_from_env({name: value})


def test_openai_protocol_builds_an_unrecorded_simulator() -> None:
    sim = build_simulator("openai", "127.0.0.1", 0, script_from_env({}))
    assert isinstance(sim, OpenAISimulator)
    assert sim.record is False


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'sip'"):
        build_simulator("sip", "127.0.0.1", 0, script_from_env({}))


def test_gemini_protocol_is_built_or_clearly_unavailable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if importlib.util.find_spec("providers.simulator.gemini") is not None:
        sim = build_simulator("gemini", "127.0.0.1", 0, script_from_env({}))
        assert type(sim).__name__ == "GeminiSimulator"
        return
    with pytest.raises(ConfigError, match=r"gemini\.py is missing"):
        build_simulator("gemini", "127.0.0.1", 0, script_from_env({}))
    code = run(argparse.Namespace(protocol="gemini", host="127.0.0.1", port=0))
    assert code == 2
    assert "Gemini simulator is not available" in capsys.readouterr().err
