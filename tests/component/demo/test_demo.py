"""`voicegrid demo` end to end: in-process and distributed, both providers, WAV in and out."""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np
import pytest

from voicegrid.cli import build_parser
from voicegrid.demo import _main, caller_audio, run


def demo_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["demo", "--fast", "--out", str(tmp_path / "r.wav"), *extra])


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 24000)
        return f.getnframes() / f.getframerate()


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_in_process_call_answers_the_tool_and_speaks(
    provider: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _main(demo_args(tmp_path, "--in-process", "--provider", provider)) == 0
    out = capsys.readouterr().out
    assert "call get_weather({'city': 'Paris'})" in out
    assert "first audio (" in out
    assert "tool calls: 1" in out
    assert "  error  " not in out  # no error event on the timeline (e.g. a buffer overflow)
    assert wav_seconds(tmp_path / "r.wav") > 1.0


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_distributed_call_runs_on_an_embedded_redis(
    provider: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert await _main(demo_args(tmp_path, "--provider", provider)) == 0
    out = capsys.readouterr().out
    assert f"ingress -> embedded Redis -> worker -> {provider}" in out
    assert "call get_weather" in out and "response completed" in out
    assert "  error  " not in out
    assert wav_seconds(tmp_path / "r.wav") > 1.0


async def test_caller_wav_is_resampled_and_played(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rate = 8000
    t = np.arange(int(rate * 1.5)) / rate
    speech = (8000 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype("<i2")
    path = tmp_path / "caller.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(speech.tobytes())
    assert len(caller_audio(str(path))) == pytest.approx(1.5 * 16000 * 2, rel=0.01)
    assert await _main(demo_args(tmp_path, "--in-process", "--wav", str(path))) == 0
    assert "caller stopped speaking" in capsys.readouterr().out


def test_unreadable_wav_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "not-a.wav"
    bad.write_bytes(b"RIFF nonsense")
    assert run(demo_args(tmp_path, "--in-process", "--wav", str(bad))) == 2
    assert f"cannot read caller WAV '{bad}'" in capsys.readouterr().err


def test_live_without_a_key_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    assert run(demo_args(tmp_path, "--live", "--provider", "gemini")) == 2
    assert "--live needs GEMINI_API_KEY" in capsys.readouterr().err
