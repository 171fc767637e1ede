"""Simulator scenarios as JSON files: ``voicegrid simulate --script scenario.json``.

A scenario file sets any of :class:`~providers.simulator.model.SimScript`'s fields (the same
names; ``tool_call`` an object with :class:`~providers.simulator.model.ToolCallScript`'s), so a
team that does not write Python can load-test its producer against tool calls, barge-in,
scripted errors and Gemini ``goAway`` timing. A field the file leaves out keeps its ``SimScript``
default; ``"tool_call": null`` disables the tool call. Unknown fields are errors, and so is an
``api_key`` (a secret does not belong in a file: ``VOICEGRID_SIM_API_KEY``). Every error names the
field, the value and the expected form. The JSON Schema is ``docs/schema/simulator-scenario.json``
(``voicegrid schema``); examples are in ``examples/simulator/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.errors import ConfigError

from .model import SimScript, ToolCallScript

__all__ = ["SimScenario", "ToolCallScenario", "load_scenario", "scenario_script"]

_SCRIPT = SimScript()
_CALL = ToolCallScript()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolCallScenario(_Strict):
    """When and how the simulated model calls a tool (``ToolCallScript``)."""

    name: str | None = Field(
        default=_CALL.name,
        description="tool to call; null: the session's first declared tool (an undeclared name "
        "is never called)",
    )
    arguments: dict[str, Any] = Field(
        default_factory=lambda: dict(_CALL.arguments), description="the call's JSON arguments"
    )
    on_turn: int = Field(
        default=_CALL.on_turn, ge=0, description="1-based user turn that triggers it; 0: every turn"
    )
    say_after: str | None = Field(
        default=_CALL.say_after,
        description="OpenAI: speech after the call in the same response, so a barge-in can cancel "
        "a response whose call is unanswered",
    )


class SimScenario(_Strict):
    """A simulator scenario file (every field optional; defaults are ``SimScript``'s)."""

    schema_: str | None = Field(
        default=None, alias="$schema", description="optional: the JSON Schema, for editors"
    )
    description: str | None = Field(default=None, description="optional: what it simulates")
    reply_text: str = Field(default=_SCRIPT.reply_text, description="what the model says")
    user_transcript: str = Field(
        default=_SCRIPT.user_transcript, description="the transcript of every caller turn"
    )
    reply_audio_ms: int | None = Field(
        default=_SCRIPT.reply_audio_ms,
        gt=0,
        description="reply length in ms; null: ~65 ms per character of reply_text",
    )
    speed: float = Field(
        default=_SCRIPT.speed, ge=0, description="reply pacing: 1 real time, 20 faster, 0 at once"
    )
    chunk_ms: int = Field(default=_SCRIPT.chunk_ms, gt=0, description="ms of audio per delta")
    vad_threshold_rms: float = Field(
        default=_SCRIPT.vad_threshold_rms,
        gt=0,
        description="PCM16 RMS above which 10 ms of input is speech (at the default threshold)",
    )
    silence_ms: int = Field(
        default=_SCRIPT.silence_ms, ge=0, description="silence that ends a caller turn"
    )
    tool_call: ToolCallScenario | None = Field(
        default_factory=ToolCallScenario, description="the tool call; null: never call a tool"
    )
    errors_after_turn: dict[int, str] = Field(
        default_factory=dict,
        description='{"<turn>": "<error code>"}: a recoverable error right after that turn\'s '
        "first response",
    )
    go_away_after_s: float | None = Field(
        default=_SCRIPT.go_away_after_s,
        gt=0,
        description="Gemini: send goAway this long after each connection's setup",
    )
    go_away_time_left_s: float = Field(
        default=_SCRIPT.go_away_time_left_s,
        ge=0,
        description="Gemini: the goAway's timeLeft; the connection closes when it has passed",
    )
    max_session_s: float | None = Field(
        default=_SCRIPT.max_session_s,
        gt=0,
        description="close every connection after this long (OpenAI 1001, as at 60 minutes)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, value: Any) -> Any:
        if isinstance(value, dict) and "api_key" in value:
            raise ValueError(
                "'api_key' does not belong in a scenario file; set VOICEGRID_SIM_API_KEY"
            )
        return value

    @model_validator(mode="after")
    def _turns(self) -> SimScenario:
        bad = sorted(turn for turn in self.errors_after_turn if turn < 1)
        if bad:
            raise ValueError(f"errors_after_turn turns {bad} are invalid; expected turns >= 1")
        empty = sorted(turn for turn, code in self.errors_after_turn.items() if not code)
        if empty:
            raise ValueError(f"errors_after_turn codes of turns {empty} are empty")
        return self


def scenario_script(scenario: SimScenario) -> SimScript:
    """The ``SimScript`` a validated scenario describes."""
    call = scenario.tool_call
    return SimScript(
        reply_text=scenario.reply_text,
        user_transcript=scenario.user_transcript,
        reply_audio_ms=scenario.reply_audio_ms,
        speed=scenario.speed,
        tool_call=None
        if call is None
        else ToolCallScript(
            name=call.name,
            arguments=dict(call.arguments),
            on_turn=call.on_turn,
            say_after=call.say_after,
        ),
        vad_threshold_rms=scenario.vad_threshold_rms,
        silence_ms=scenario.silence_ms,
        errors_after_turn=dict(scenario.errors_after_turn),
        go_away_after_s=scenario.go_away_after_s,
        go_away_time_left_s=scenario.go_away_time_left_s,
        max_session_s=scenario.max_session_s,
        chunk_ms=scenario.chunk_ms,
    )


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        # a whole-file error never echoes the file (it may hold a secret by mistake)
        got = "" if err["type"] == "missing" or not where else f" (got {err['input']!r})"
        where = where or "scenario"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(parts)


def load_scenario(path: str | Path) -> SimScript:
    """Read and validate a scenario file; raise ``ConfigError`` naming the problem."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read scenario file {str(file)!r}: {exc.strerror or exc}"
        ) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f"scenario file {str(file)!r} is not JSON: {exc}; expected a JSON object"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"scenario file {str(file)!r} holds a JSON {type(data).__name__}; expected an object "
            "of SimScript fields (docs/simulator.md)"
        )
    try:
        scenario = SimScenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"scenario file {str(file)!r}: {_problems(exc)}") from None
    return scenario_script(scenario)
