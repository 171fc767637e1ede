"""Session config on the wire, the handshake, in-place updates and session-level errors."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    AudioFormat,
    ConfigRejectedError,
    ProviderAuthError,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    ToolDefinition,
    TurnDetection,
)
from providers.openai.translator import (
    DEFAULT_TRANSCRIPTION_MODEL,
    Fatal,
    HandshakeDone,
    HandshakeFailed,
    OpenAITranslator,
    Reconnect,
    UpdateDone,
    UpdateFailed,
)

WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def handshake(config: RealtimeSessionConfig, wire: Any) -> dict[str, Any]:
    frames = OpenAITranslator(config).handshake_frames(reconnect=False)
    assert len(frames) == 1
    wire.client_ok(frames[0])
    assert frames[0]["type"] == "session.update"
    session: dict[str, Any] = frames[0]["session"]
    return session


def test_default_config_is_the_ga_shape(wire: Any) -> None:
    session = handshake(RealtimeSessionConfig(instructions="Be brief."), wire)
    assert session == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "tools": [],
        "tool_choice": "auto",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": DEFAULT_TRANSCRIPTION_MODEL},
                "turn_detection": {
                    "type": "server_vad",
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}},
        },
    }


def test_full_config_maps_every_field(wire: Any) -> None:
    config = RealtimeSessionConfig(
        instructions="x",
        tools=[WEATHER],
        tool_choice="get_weather",
        voice="marin",
        input_audio=AudioFormat(encoding="pcm16", sample_rate=16000),
        output_audio=AudioFormat(encoding="pcm16", sample_rate=48000),
        turn_detection=TurnDetection(
            mode="server_vad", threshold=0.6, silence_ms=400, prefix_padding_ms=200
        ),
        language="de",
        temperature=0.7,
        max_output_tokens=512,
        provider_options={"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
    )
    session = handshake(config, wire)
    assert session["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": WEATHER.parameters,
        }
    ]
    assert session["tool_choice"] == {"type": "function", "name": "get_weather"}
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000}  # converted on the client
    assert audio_in["transcription"] == {"model": DEFAULT_TRANSCRIPTION_MODEL, "language": "de"}
    assert audio_in["turn_detection"] == {
        "type": "server_vad",
        "create_response": True,
        "interrupt_response": True,
        "threshold": 0.6,
        "prefix_padding_ms": 200,
        "silence_duration_ms": 400,
    }
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
    }
    assert session["max_output_tokens"] == 512
    assert "temperature" not in session  # not a GA field


@pytest.mark.parametrize(
    ("encoding", "wire_type"), [("mulaw", "audio/pcmu"), ("alaw", "audio/pcma")]
)
def test_g711_at_8khz_passes_through(wire: Any, encoding: str, wire_type: str) -> None:
    fmt = AudioFormat(encoding=encoding, sample_rate=8000)  # type: ignore[arg-type]
    session = handshake(RealtimeSessionConfig(input_audio=fmt, output_audio=fmt), wire)
    assert session["audio"]["input"]["format"] == {"type": wire_type}
    assert session["audio"]["output"]["format"] == {"type": wire_type}


def test_g711_at_other_rates_is_sent_as_pcm(wire: Any) -> None:
    fmt = AudioFormat(encoding="mulaw", sample_rate=16000)
    session = handshake(RealtimeSessionConfig(input_audio=fmt), wire)
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_manual_and_semantic_turn_detection(wire: Any) -> None:
    manual = handshake(RealtimeSessionConfig(turn_detection=TurnDetection(mode="manual")), wire)
    assert manual["audio"]["input"]["turn_detection"] is None
    semantic = handshake(
        RealtimeSessionConfig(
            turn_detection=TurnDetection(mode="semantic_vad", interrupt_response=False)
        ),
        wire,
    )
    assert semantic["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "create_response": True,
        "interrupt_response": False,
    }


def test_transcription_off_and_custom_model(wire: Any) -> None:
    off = handshake(RealtimeSessionConfig(input_transcription=False), wire)
    assert "transcription" not in off["audio"]["input"]
    frames = OpenAITranslator(
        RealtimeSessionConfig(), transcription_model="gpt-4o-transcribe"
    ).handshake_frames(reconnect=False)
    assert frames[0]["session"]["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}


def test_handshake_resolves_on_session_updated_only(wire: Any) -> None:
    translator = OpenAITranslator(RealtimeSessionConfig())
    translator.handshake_frames(reconnect=False)
    created = wire.load("full_turn")[0]
    assert created["type"] == "session.created"
    assert translator.receive(created, 0.0) == []
    assert translator.receive(wire.session_updated(), 0.0) == [HandshakeDone()]
    assert translator.receive(wire.session_updated(), 0.0) == []  # unsolicited: nothing


def test_rejected_session_update_fails_the_handshake(wire: Any) -> None:
    translator = OpenAITranslator(RealtimeSessionConfig())
    event_id = translator.handshake_frames(reconnect=False)[0]["event_id"]
    actions = translator.receive(
        wire.error(
            "unknown_parameter",
            "Unknown parameter: 'session.foo'.",
            event_id=event_id,
            param="session.foo",
        ),
        0.0,
    )
    assert len(actions) == 1
    assert isinstance(actions[0], HandshakeFailed)
    error = actions[0].error
    assert isinstance(error, ConfigRejectedError)
    assert error.code == "unknown_parameter"
    assert "Unknown parameter: 'session.foo'." in error.message


@pytest.mark.parametrize("code", ["invalid_api_key", "insufficient_quota", "account_deactivated"])
def test_fatal_codes_fail_the_handshake_or_the_session(wire: Any, code: str) -> None:
    translator = OpenAITranslator(RealtimeSessionConfig())
    translator.handshake_frames(reconnect=False)
    actions = translator.receive(wire.error(code), 0.0)
    assert isinstance(actions[0], HandshakeFailed)
    assert isinstance(actions[0].error, ProviderAuthError)
    assert actions[0].error.code == code

    live = wire.live()
    actions = live.receive(wire.error(code), 0.0)
    assert isinstance(actions[0], Fatal)
    assert actions[0].error.code == code
    assert actions[0].error.recoverable is False


def test_other_errors_are_recoverable_events_with_the_provider_code(wire: Any) -> None:
    live = wire.live()
    actions = live.receive(wire.error("invalid_value", "nope"), 0.0)
    (event,) = wire.emitted(actions, "error")
    assert event.code == "invalid_value"
    assert event.recoverable is True
    assert "nope" in event.message
    # no code: fall back to the error type
    (event,) = wire.emitted(live.receive(wire.error(None, kind="server_error"), 0.0), "error")
    assert event.code == "server_error"


def test_beta_session_expired_asks_for_a_reconnect(wire: Any) -> None:
    actions = wire.live().receive(wire.error("session_expired", "expired"), 0.0)
    assert len(actions) == 1
    assert isinstance(actions[0], Reconnect)


def test_update_sends_only_changed_fields(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(instructions="a", voice="marin"))
    plan = translator.update(
        RealtimeSessionConfigUpdate(instructions="b", voice="marin", temperature=0.3)
    )
    (frame,) = wire.sent(plan.actions)
    assert frame["session"] == {"type": "realtime", "instructions": "b"}
    assert translator.config.instructions == "b"
    assert translator.receive(wire.session_updated(), 0.0) == [UpdateDone(plan.event_id or "")]


def test_update_maps_nested_fields(wire: Any) -> None:
    translator = wire.live()
    plan = translator.update(
        RealtimeSessionConfigUpdate(
            turn_detection=TurnDetection(mode="manual"),
            input_transcription=False,
            tools=[WEATHER],
            max_output_tokens=None,
        )
    )
    (frame,) = wire.sent(plan.actions)
    assert frame["session"] == {
        "type": "realtime",
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER.parameters,
            }
        ],
        "audio": {"input": {"transcription": None, "turn_detection": None}},
    }


def test_update_with_no_wire_change_sends_nothing(wire: Any) -> None:
    translator = wire.live()
    plan = translator.update(RealtimeSessionConfigUpdate(temperature=0.2))
    assert plan.event_id is None
    assert wire.sent(plan.actions) == []
    assert translator.config.temperature == 0.2


def test_voice_change_after_audio_is_an_error_and_the_rest_applies(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(voice="marin"))
    wire.drive(translator, wire.reply("resp_1", "item_a"))
    plan = translator.update(RealtimeSessionConfigUpdate(voice="cedar", instructions="new"))
    (error,) = wire.emitted(plan.actions, "error")
    assert error.code == "cannot_update_voice"
    assert error.recoverable is True
    (frame,) = wire.sent(plan.actions)
    assert frame["session"] == {"type": "realtime", "instructions": "new"}
    assert translator.config.voice == "marin"
    assert translator.config.instructions == "new"


def test_voice_change_before_audio_is_sent(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(voice="marin"))
    plan = translator.update(RealtimeSessionConfigUpdate(voice="cedar"))
    (frame,) = wire.sent(plan.actions)
    assert frame["session"] == {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}


def test_rejected_update_restores_the_config(wire: Any) -> None:
    translator = wire.live(RealtimeSessionConfig(instructions="a"))
    plan = translator.update(RealtimeSessionConfigUpdate(instructions="b"))
    actions = translator.receive(
        wire.error("invalid_value", "bad", event_id=plan.event_id, param="session.instructions"),
        0.0,
    )
    assert len(actions) == 1
    assert isinstance(actions[0], UpdateFailed)
    assert actions[0].event_id == plan.event_id
    assert actions[0].error.code == "invalid_value"
    assert translator.config.instructions == "a"


def test_update_changing_the_output_format_switches_conversion(wire: Any) -> None:
    translator = wire.live()
    plan = translator.update(
        RealtimeSessionConfigUpdate(output_audio=AudioFormat(encoding="mulaw", sample_rate=8000))
    )
    (frame,) = wire.sent(plan.actions)
    assert frame["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    translator.receive(wire.session_updated(), 0.0)
    wire.drive(translator, [wire.response_created("r"), wire.message_added("r", "i")])
    (audio,) = wire.emitted(translator.receive(wire.audio("r", "i", nbytes=160), 0.0), "audio")
    assert audio.sample_rate == 8000
    assert len(audio.data) == 160  # G.711 passthrough: one byte per sample


def test_provider_options_cannot_change_the_session_type(wire: Any) -> None:
    session = handshake(
        RealtimeSessionConfig(provider_options={"type": "transcription", "tracing": "auto"}), wire
    )
    assert session["type"] == "realtime"
    assert session["tracing"] == "auto"
