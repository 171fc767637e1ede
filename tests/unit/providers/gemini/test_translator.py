"""GeminiTranslator driven by wire JSON: every kind of ``LiveServerMessage``, every command."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import numpy as np
import pytest

from protocol import (
    AudioEvent,
    AudioFormat,
    AudioFormatError,
    ConfigError,
    InterruptedEvent,
    ProviderProtocolError,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ResponseDoneEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    ToolDefinition,
    TurnDetection,
    UsageError,
)
from providers.gemini.translator import (
    INPUT_MIME_TYPE,
    Emit,
    GeminiTranslator,
    GoAway,
    Output,
    ResumptionPoint,
    SetupComplete,
    function_response_payload,
    message_index,
    parse_duration,
    qualify_model,
)
from providers.translator import MalformedFrame


def wire(message: dict[str, Any], *, binary: bool = True) -> bytes | str:
    text = json.dumps(message)
    return text.encode() if binary else text


def events(outputs: list[Output]) -> list[tuple[str, Any]]:
    return [(o.name, o.payload) for o in outputs if isinstance(o, Emit)]


def names(outputs: list[Output]) -> list[str]:
    return [o.name for o in outputs if isinstance(o, Emit)]


def audio_part(samples: int = 480, rate: int = 24000) -> dict[str, Any]:
    pcm = (np.sin(np.arange(samples) / 5.0) * 8000).astype("<i2").tobytes()
    return {
        "inlineData": {"mimeType": f"audio/pcm;rate={rate}", "data": base64.b64encode(pcm).decode()}
    }


def native_config(**fields: Any) -> RealtimeSessionConfig:
    """Session formats equal to Gemini's native ones, so audio passes through unchanged."""
    return RealtimeSessionConfig(
        input_audio=AudioFormat(sample_rate=16000),
        output_audio=AudioFormat(sample_rate=24000),
        **fields,
    )


@pytest.fixture
def tr() -> GeminiTranslator:
    return GeminiTranslator(
        model="gemini-2.5-flash-native-audio-preview-12-2025", config=native_config()
    )


# ----------------------------------------------------------------------------- helpers


def test_qualify_model() -> None:
    assert qualify_model("gemini-live") == "models/gemini-live"
    assert qualify_model("models/gemini-live") == "models/gemini-live"
    vertex = "projects/p/locations/l/publishers/google/models/gemini-live-2.5-flash-native-audio"
    assert qualify_model(vertex) == vertex
    assert qualify_model("publishers/google/models/x") == "publishers/google/models/x"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("50s", 50.0),
        ("0.500s", 0.5),
        ("1.000000001s", 1.000000001),
        (3, 3.0),
        ({"seconds": 2, "nanos": 500_000_000}, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["50", "s", "PT5S", None, True, [1]])
def test_parse_duration_invalid(value: object) -> None:
    assert parse_duration(value) is None


def test_function_response_payload_wraps_non_objects() -> None:
    assert function_response_payload(RealtimeToolResponse(call_id="a", output={"t": 1})) == {"t": 1}
    assert function_response_payload(RealtimeToolResponse(call_id="a", output="sunny")) == {
        "output": "sunny"
    }
    assert function_response_payload(RealtimeToolResponse(call_id="a", output=[1, 2])) == {
        "output": [1, 2]
    }
    assert function_response_payload(RealtimeToolResponse(call_id="a", output=None)) == {
        "output": None
    }
    assert function_response_payload(
        RealtimeToolResponse(call_id="a", output="boom", is_error=True)
    ) == {"error": "boom"}


# ------------------------------------------------------------------------------- setup


def test_setup_maps_the_whole_config() -> None:
    config = native_config(
        instructions="Be brief.",
        voice="Puck",
        language="en-US",
        temperature=0.6,
        max_output_tokens=512,
        tools=[
            ToolDefinition(
                name="get_weather",
                description="Weather",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
            )
        ],
        turn_detection=TurnDetection(
            silence_ms=400, prefix_padding_ms=100, threshold=0.8, interrupt_response=False
        ),
    )
    tr = GeminiTranslator(model="gemini-live", config=config)
    setup = tr.setup_frame(resume=False)["setup"]
    assert setup == {
        "model": "models/gemini-live",
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}},
                "languageCode": "en-US",
            },
            "temperature": 0.6,
            "maxOutputTokens": 512,
        },
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather",
                        "parametersJsonSchema": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    }
                ]
            }
        ],
        "realtimeInputConfig": {
            "automaticActivityDetection": {
                "startOfSpeechSensitivity": "START_SENSITIVITY_LOW",
                "silenceDurationMs": 400,
                "prefixPaddingMs": 100,
            },
            "activityHandling": "NO_INTERRUPTION",
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        "sessionResumption": {},
        "contextWindowCompression": {"slidingWindow": {}},
    }


def test_setup_minimal_defaults(tr: GeminiTranslator) -> None:
    setup = tr.setup_frame(resume=False)["setup"]
    assert setup["generationConfig"] == {"responseModalities": ["AUDIO"]}
    assert "systemInstruction" not in setup and "tools" not in setup
    assert "realtimeInputConfig" not in setup
    assert setup["sessionResumption"] == {}
    assert setup["contextWindowCompression"] == {"slidingWindow": {}}


def test_setup_manual_turns_and_no_transcription() -> None:
    tr = GeminiTranslator(
        model="m",
        config=native_config(
            turn_detection=TurnDetection(mode="manual"),
            input_transcription=False,
            output_transcription=False,
        ),
    )
    setup = tr.setup_frame(resume=False)["setup"]
    assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
    assert "inputAudioTranscription" not in setup and "outputAudioTranscription" not in setup


def test_setup_low_threshold_means_high_sensitivity() -> None:
    tr = GeminiTranslator(
        model="m", config=native_config(turn_detection=TurnDetection(threshold=0.2))
    )
    detection = tr.setup_frame(resume=False)["setup"]["realtimeInputConfig"][
        "automaticActivityDetection"
    ]
    assert detection == {"startOfSpeechSensitivity": "START_SENSITIVITY_HIGH"}


def test_setup_tool_choice_none_declares_no_tools() -> None:
    tool = ToolDefinition(name="t")
    tr = GeminiTranslator(model="m", config=native_config(tools=[tool], tool_choice="none"))
    assert "tools" not in tr.setup_frame(resume=False)["setup"]


def test_setup_provider_options_deep_merge() -> None:
    options = {
        "setup": {
            "contextWindowCompression": None,
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}, "temperature": 0.1},
            "proactivity": {"proactiveAudio": True},
        }
    }
    tr = GeminiTranslator(
        model="m", config=native_config(temperature=0.9, provider_options=options)
    )
    setup = tr.setup_frame(resume=False)["setup"]
    assert "contextWindowCompression" not in setup
    assert setup["generationConfig"] == {
        "responseModalities": ["AUDIO"],
        "temperature": 0.1,
        "thinkingConfig": {"thinkingBudget": 0},
    }
    assert setup["proactivity"] == {"proactiveAudio": True}
    # the merge copies: mutating the frame leaves the config alone
    setup["generationConfig"]["thinkingConfig"]["thinkingBudget"] = 5
    assert options["setup"]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}  # type: ignore[index]


def test_provider_options_setup_must_be_a_dict() -> None:
    with pytest.raises(ConfigError, match="provider_options"):
        GeminiTranslator(model="m", config=native_config(provider_options={"setup": ["x"]}))


def test_setup_resume_carries_the_handle(tr: GeminiTranslator) -> None:
    assert tr.setup_frame(resume=True)["setup"]["sessionResumption"] == {}
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}))
    assert tr.setup_frame(resume=True)["setup"]["sessionResumption"] == {"handle": "h1"}
    assert tr.setup_frame(resume=False)["setup"]["sessionResumption"] == {}
    tr.drop_handle()
    assert tr.handle is None
    assert tr.setup_frame(resume=True)["setup"]["sessionResumption"] == {}


# ------------------------------------------------------------------------------- audio in


def test_audio_frames_use_realtime_input_audio(tr: GeminiTranslator) -> None:
    pcm = b"\x01\x02" * 320
    frame = tr.audio_frame(tr.input_audio(pcm))
    assert [frame] == [
        {
            "realtimeInput": {
                "audio": {
                    "data": base64.b64encode(pcm).decode(),
                    "mimeType": "audio/pcm;rate=16000",
                }
            }
        }
    ]
    assert INPUT_MIME_TYPE == "audio/pcm;rate=16000"


def test_input_audio_converts_to_16k() -> None:
    tr = GeminiTranslator(
        model="m", config=RealtimeSessionConfig(input_audio=AudioFormat(sample_rate=48000))
    )
    out = b"".join(tr.input_audio(b"\x00\x10" * 960) for _ in range(100))
    # 48 kHz -> 16 kHz: a third of the samples, give or take the filter delay
    assert abs(len(out) - 100 * 640) <= 1200 and len(out) % 2 == 0


def test_input_audio_mulaw() -> None:
    tr = GeminiTranslator(
        model="m",
        config=RealtimeSessionConfig(input_audio=AudioFormat(encoding="mulaw", sample_rate=8000)),
    )
    out = b"".join(tr.input_audio(b"\xff" * 160) for _ in range(100))
    # 8 kHz G.711 -> 16 kHz PCM16: four bytes out per byte in, give or take the filter delay
    assert len(out) % 2 == 0 and abs(len(out) - 100 * 640) <= 3200


@pytest.mark.parametrize("bad", [b"\x00\x01\x02", "text", 5])
def test_input_audio_rejects_bad_frames(tr: GeminiTranslator, bad: object) -> None:
    with pytest.raises(AudioFormatError):
        tr.input_audio(bad)


def test_manual_audio_opens_one_activity_per_turn() -> None:
    tr = GeminiTranslator(
        model="m", config=native_config(turn_detection=TurnDetection(mode="manual"))
    )
    assert tr.activity_start_frames() == [{"realtimeInput": {"activityStart": {}}}]
    assert tr.activity_start_frames() == []
    assert tr.request_response_frames(None) == [{"realtimeInput": {"activityEnd": {}}}]
    assert tr.activity_start_frames() == [{"realtimeInput": {"activityStart": {}}}]


def test_automatic_detection_needs_no_activity_markers(tr: GeminiTranslator) -> None:
    assert tr.activity_start_frames() == []


# ---------------------------------------------------------------------- request_response


def test_request_response_with_instruction_sends_text(tr: GeminiTranslator) -> None:
    assert tr.request_response_frames("Say hello") == [{"realtimeInput": {"text": "Say hello"}}]
    assert list(tr.history) == [("user", "Say hello")]


def test_request_response_without_instruction_ends_the_audio_stream(tr: GeminiTranslator) -> None:
    assert tr.request_response_frames(None) == [{"realtimeInput": {"audioStreamEnd": True}}]


def test_request_response_manual_brackets_the_turn() -> None:
    tr = GeminiTranslator(
        model="m", config=native_config(turn_detection=TurnDetection(mode="manual"))
    )
    assert tr.request_response_frames("Hi") == [
        {"realtimeInput": {"activityStart": {}}},
        {"realtimeInput": {"text": "Hi"}},
        {"realtimeInput": {"activityEnd": {}}},
    ]


# ------------------------------------------------------------------------- server frames


def test_setup_complete_text_and_binary(tr: GeminiTranslator) -> None:
    assert tr.receive(wire({"setupComplete": {}})) == [SetupComplete(None)]
    assert tr.receive(wire({"setupComplete": {"sessionId": "s-1"}}, binary=False)) == [
        SetupComplete("s-1")
    ]


def test_full_turn(tr: GeminiTranslator) -> None:
    out: list[Output] = []
    out += tr.receive(wire({"serverContent": {"inputTranscription": {"text": "What's the "}}}))
    out += tr.receive(
        wire({"serverContent": {"inputTranscription": {"text": "weather?", "finished": True}}})
    )
    out += tr.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part()]}}}))
    out += tr.receive(wire({"serverContent": {"outputTranscription": {"text": "It is "}}}))
    out += tr.receive(
        wire(
            {
                "serverContent": {
                    "modelTurn": {"parts": [audio_part()]},
                    "outputTranscription": {"text": "sunny."},
                }
            }
        )
    )
    out += tr.receive(wire({"serverContent": {"generationComplete": True}}))
    out += tr.receive(
        wire(
            {
                "serverContent": {
                    "turnComplete": True,
                    "turnCompleteReason": "TURN_COMPLETE_REASON_UNSPECIFIED",
                },
                "usageMetadata": {
                    "promptTokenCount": 120,
                    "responseTokenCount": 40,
                    "totalTokenCount": 160,
                    "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 100}],
                },
            }
        )
    )
    evs = events(out)
    assert [n for n, _ in evs] == [
        "transcript",
        "transcript",
        "transcript",
        "audio",
        "transcript",
        "audio",
        "transcript",
        "transcript",
        "response-done",
    ]
    user = [p for n, p in evs if n == "transcript" and p.role == "user"]
    assert [(u.text, u.final) for u in user] == [
        ("What's the ", False),
        ("weather?", False),
        ("What's the weather?", True),
    ]
    assert user[0].item_id == user[2].item_id
    assistant = [p for n, p in evs if n == "transcript" and p.role == "assistant"]
    assert [(a.text, a.final) for a in assistant] == [
        ("It is ", False),
        ("sunny.", False),
        ("It is sunny.", True),
    ]
    audio = [p for n, p in evs if n == "audio"]
    assert all(
        isinstance(a, AudioEvent) and a.sample_rate == 24000 and len(a.data) == 960 for a in audio
    )
    done = evs[-1][1]
    assert isinstance(done, ResponseDoneEvent)
    assert (
        done.status == "completed"
        and done.response_id == audio[0].response_id == assistant[-1].item_id
    )
    assert done.usage is not None and (
        done.usage.input_tokens,
        done.usage.output_tokens,
        done.usage.total_tokens,
    ) == (120, 40, 160)
    assert list(tr.history) == [("user", "What's the weather?"), ("model", "It is sunny.")]


def test_audio_out_converted_to_session_rate() -> None:
    tr = GeminiTranslator(
        model="m", config=RealtimeSessionConfig(output_audio=AudioFormat(sample_rate=8000))
    )
    out = tr.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part(2400)]}}}))
    out += tr.receive(wire({"serverContent": {"generationComplete": True, "turnComplete": True}}))
    audio = [p for n, p in events(out) if n == "audio"]
    assert sum(len(a.data) for a in audio) == pytest.approx(2400 // 3 * 2, abs=4)
    assert {a.sample_rate for a in audio} == {8000}


def test_one_response_done_per_turn_and_new_ids(tr: GeminiTranslator) -> None:
    ids = []
    for _ in range(3):
        out = tr.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part()]}}}))
        out += tr.receive(wire({"serverContent": {"turnComplete": True}}))
        done = [p for n, p in events(out) if n == "response-done"]
        assert len(done) == 1
        ids.append(done[0].response_id)
    assert len(set(ids)) == 3


def test_bare_turn_complete_still_ends_one_turn(tr: GeminiTranslator) -> None:
    out = tr.receive(wire({"serverContent": {"turnComplete": True}}))
    assert names(out) == ["response-done"]


def test_vertex_usage_candidates_token_count(tr: GeminiTranslator) -> None:
    out = tr.receive(
        wire(
            {
                "serverContent": {"turnComplete": True},
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4},
            }
        )
    )
    usage = events(out)[-1][1].usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (3, 4, 7)


def test_barge_in(tr: GeminiTranslator) -> None:
    out = tr.receive(
        wire(
            {
                "serverContent": {
                    "modelTurn": {"parts": [audio_part()]},
                    "outputTranscription": {"text": "Long ans"},
                }
            }
        )
    )
    out += tr.receive(wire({"serverContent": {"inputTranscription": {"text": "stop"}}}))
    out += tr.receive(wire({"serverContent": {"interrupted": True}}))
    out += tr.receive(wire({"serverContent": {"turnComplete": True}}))
    evs = events(out)
    assert [n for n, _ in evs] == [
        "audio",
        "transcript",
        "transcript",
        "interrupted",
        "transcript",
        "response-done",
    ]
    interrupted = evs[3][1]
    assert (
        isinstance(interrupted, InterruptedEvent)
        and interrupted.response_id == evs[0][1].response_id
    )
    assert evs[4][1].final and evs[4][1].text == "Long ans"
    assert evs[-1][1].status == "cancelled"
    # the barge-in utterance stays open for the next turn, finalised when that turn completes
    out = tr.receive(
        wire({"serverContent": {"inputTranscription": {"text": " now", "finished": True}}})
    )
    finals = [p for n, p in events(out) if n == "transcript" and p.final]
    assert finals[0].role == "user" and finals[0].text == "stop now"


def test_interrupted_without_generation_complete_emits_no_tail_audio(tr: GeminiTranslator) -> None:
    tr24 = GeminiTranslator(
        model="m", config=RealtimeSessionConfig(output_audio=AudioFormat(sample_rate=16000))
    )
    tr24.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part(2400)]}}}))
    out = tr24.receive(wire({"serverContent": {"interrupted": True}}))
    out += tr24.receive(wire({"serverContent": {"turnComplete": True}}))
    assert "audio" not in names(out)
    assert names(out) == ["interrupted", "response-done"]


def test_user_transcript_final_at_turn_complete_without_finished(tr: GeminiTranslator) -> None:
    out = tr.receive(wire({"serverContent": {"inputTranscription": {"text": "Hello"}}}))
    out += tr.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part()]}}}))
    out += tr.receive(wire({"serverContent": {"inputTranscription": {"text": " there"}}}))
    out += tr.receive(wire({"serverContent": {"turnComplete": True}}))
    finals = [p for n, p in events(out) if n == "transcript" and p.final]
    assert [(f.role, f.text) for f in finals] == [("user", "Hello there")]


def test_thought_and_text_parts_ignored_for_audio_sessions(tr: GeminiTranslator) -> None:
    out = tr.receive(
        wire(
            {
                "serverContent": {
                    "modelTurn": {
                        "parts": [{"text": "**Thinking**", "thought": True}, {"text": "hi"}]
                    }
                }
            }
        )
    )
    assert out == []


def test_text_parts_are_the_reply_for_text_sessions() -> None:
    options = {"setup": {"generationConfig": {"responseModalities": ["TEXT"]}}}
    tr = GeminiTranslator(model="m", config=native_config(provider_options=options))
    out = tr.receive(
        wire({"serverContent": {"modelTurn": {"parts": [{"text": "Hi!"}]}, "turnComplete": True}})
    )
    assert [(n, getattr(p, "text", None)) for n, p in events(out)] == [
        ("transcript", "Hi!"),
        ("transcript", "Hi!"),
        ("response-done", None),
    ]


def test_tool_call_and_response(tr: GeminiTranslator) -> None:
    out = tr.receive(
        wire(
            {
                "toolCall": {
                    "functionCalls": [
                        {"id": "fc-1", "name": "get_weather", "args": {"city": "Paris"}},
                        {"id": "fc-2", "name": "get_time"},
                    ]
                }
            }
        )
    )
    calls = [p for n, p in events(out) if n == "tool-call"]
    assert calls == [
        ToolCallEvent(call_id="fc-1", name="get_weather", arguments={"city": "Paris"}),
        ToolCallEvent(call_id="fc-2", name="get_time", arguments={}),
    ]
    assert tr.pending_call_ids == ["fc-1", "fc-2"]
    assert not tr.at_resumable_point
    frames = tr.tool_response_frames(
        [
            RealtimeToolResponse(call_id="fc-1", output={"temp": 21}),
            RealtimeToolResponse(call_id="fc-2", output="noon", name="get_time"),
        ]
    )
    assert frames == [
        {
            "toolResponse": {
                "functionResponses": [
                    {"id": "fc-1", "name": "get_weather", "response": {"temp": 21}},
                    {"id": "fc-2", "name": "get_time", "response": {"output": "noon"}},
                ]
            }
        }
    ]
    assert tr.pending_call_ids == []


def test_tool_call_without_id_gets_one(tr: GeminiTranslator) -> None:
    out = tr.receive(wire({"toolCall": {"functionCalls": [{"name": "f", "args": {}}]}}))
    call = events(out)[0][1]
    assert call.call_id.startswith("gemini-call-")
    frame = tr.tool_response_frames([RealtimeToolResponse(call_id=call.call_id, output=1)])
    assert frame[0]["toolResponse"]["functionResponses"][0]["id"] == call.call_id


def test_tool_response_unknown_id_without_name_raises(tr: GeminiTranslator) -> None:
    with pytest.raises(UsageError, match="nope"):
        tr.tool_response_frames([RealtimeToolResponse(call_id="nope", output=1)])
    frames = tr.tool_response_frames([RealtimeToolResponse(call_id="nope", output=1, name="f")])
    assert frames[0]["toolResponse"]["functionResponses"][0]["name"] == "f"


def test_tool_call_cancellation(tr: GeminiTranslator, caplog: pytest.LogCaptureFixture) -> None:
    tr.receive(
        wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}, {"id": "b", "name": "g"}]}})
    )
    out = tr.receive(wire({"toolCallCancellation": {"ids": ["a", "zzz"]}}))
    assert events(out) == [("tool-call-cancelled", ToolCallCancelledEvent(call_ids=["a"]))]
    with caplog.at_level(logging.WARNING, logger="voicegrid.gemini"):
        frames = tr.tool_response_frames(
            [
                RealtimeToolResponse(call_id="a", output=1),
                RealtimeToolResponse(call_id="b", output=2),
            ]
        )
    assert [r["id"] for r in frames[0]["toolResponse"]["functionResponses"]] == ["b"]
    assert "cancelled" in caplog.text and "'a'" in caplog.text
    assert tr.tool_response_frames([RealtimeToolResponse(call_id="a", output=1)]) == []


def test_cancellation_of_answered_call_is_silent(tr: GeminiTranslator) -> None:
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}]}}))
    tr.tool_response_frames([RealtimeToolResponse(call_id="a", output=1)])
    assert tr.receive(wire({"toolCallCancellation": {"ids": ["a"]}})) == []


def test_go_away(tr: GeminiTranslator) -> None:
    assert tr.receive(wire({"goAway": {"timeLeft": "50s"}})) == [GoAway(50.0)]
    out = tr.receive(wire({"goAway": {"timeLeft": "soon"}}))
    assert names(out) == ["error"] and out[-1] == GoAway(0.0)


def test_resumption_handles(tr: GeminiTranslator) -> None:
    assert tr.handle is None and not tr.at_resumable_point
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}))
    assert tr.handle == "h1" and tr.at_resumable_point
    # non-resumable updates (generating, tool call) never erase the last good handle
    tr.receive(wire({"sessionResumptionUpdate": {"resumable": False}}))
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "", "resumable": False}}))
    tr.receive(wire({"sessionResumptionUpdate": {}}))
    assert tr.handle == "h1" and not tr.at_resumable_point
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h2", "resumable": True}}))
    assert tr.handle == "h2" and tr.at_resumable_point
    tr.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part()]}}}))
    assert not tr.at_resumable_point  # a turn is open


def test_voice_activity(tr: GeminiTranslator) -> None:
    out = tr.receive(
        wire({"voiceActivity": {"voiceActivityType": "ACTIVITY_START", "audioOffset": "1.250s"}})
    )
    assert events(out)[0][1].audio_ms == 1250
    out += tr.receive(
        wire({"voiceActivityDetectionSignal": {"vadSignalType": "VAD_SIGNAL_TYPE_EOS"}})
    )
    assert names(out) == ["speech-started", "speech-stopped"]


def test_unknown_message_is_ignored(tr: GeminiTranslator) -> None:
    assert tr.receive(wire({"somethingNew": {"x": 1}})) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"serverContent": "x"}).encode(),
        json.dumps(
            {
                "serverContent": {
                    "modelTurn": {
                        "parts": [
                            {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "!!"}}
                        ]
                    }
                }
            }
        ).encode(),
        json.dumps({"toolCall": {"functionCalls": [{"id": "x"}]}}).encode(),
        json.dumps(
            {"toolCall": {"functionCalls": [{"id": "x", "name": "f", "args": [1]}]}}
        ).encode(),
    ],
)
def test_malformed_frames_raise_a_protocol_error(tr: GeminiTranslator, raw: bytes) -> None:
    # as in the OpenAI translator: the transport reports it as a recoverable malformed_frame
    with pytest.raises(ProviderProtocolError):
        tr.receive(raw)
    # the translator is still usable afterwards
    out = tr.receive(wire({"serverContent": {"modelTurn": {"parts": [audio_part()]}}}))
    assert names(out) == ["audio"]


def test_a_partly_malformed_message_keeps_what_its_good_parts_produced(
    tr: GeminiTranslator,
) -> None:
    message = {
        "setupComplete": {},
        "toolCall": {"functionCalls": [{"id": "a", "name": "f"}, {"id": "b"}]},
    }
    with pytest.raises(MalformedFrame, match="without a name") as caught:
        tr.receive(wire(message))
    salvaged = caught.value.salvaged
    assert salvaged[0] == SetupComplete()
    assert events(salvaged) == [("tool-call", ToolCallEvent(call_id="a", name="f", arguments={}))]
    assert tr.pending_call_ids == ["a"]


# ----------------------------------------------------------------- connection changes


def test_connection_lost_closes_the_open_turn_once(tr: GeminiTranslator) -> None:
    tr.receive(
        wire(
            {
                "serverContent": {
                    "modelTurn": {"parts": [audio_part()]},
                    "outputTranscription": {"text": "Hal"},
                }
            }
        )
    )
    out = tr.connection_lost()
    assert names(out) == ["transcript", "response-done"]
    assert events(out)[-1][1].status == "incomplete"
    assert tr.connection_lost() == []


def test_session_restored_after_resume_cancels_calls_newer_than_the_handle(
    tr: GeminiTranslator,
) -> None:
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "old", "name": "f"}]}}))
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h", "resumable": True}}))
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "new", "name": "f"}]}}))
    tr.connection_lost()
    out = tr.session_restored(resumed=True)
    assert events(out) == [("tool-call-cancelled", ToolCallCancelledEvent(call_ids=["new"]))]
    assert tr.pending_call_ids == ["old"]
    assert tr.tool_response_frames([RealtimeToolResponse(call_id="new", output=1)]) == []
    assert len(tr.tool_response_frames([RealtimeToolResponse(call_id="old", output=1)])) == 1


def test_session_restored_new_session_cancels_every_pending_call(tr: GeminiTranslator) -> None:
    tr.receive(
        wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}, {"id": "b", "name": "f"}]}})
    )
    out = tr.session_restored(resumed=False)
    assert events(out) == [("tool-call-cancelled", ToolCallCancelledEvent(call_ids=["a", "b"]))]
    assert tr.session_restored(resumed=False) == []


def test_restart_frames_seed_a_new_session_with_the_conversation(tr: GeminiTranslator) -> None:
    tr.session_restored(resumed=False)
    assert tr.restart_frames() == []
    tr.receive(
        wire(
            {
                "serverContent": {
                    "inputTranscription": {"text": "Weather in Paris?", "finished": True}
                }
            }
        )
    )
    tr.receive(
        wire(
            {
                "toolCall": {
                    "functionCalls": [{"id": "c", "name": "get_weather", "args": {"city": "Paris"}}]
                }
            }
        )
    )
    tr.tool_response_frames([RealtimeToolResponse(call_id="c", output="sunny")])
    tr.receive(
        wire({"serverContent": {"outputTranscription": {"text": "Sunny."}, "turnComplete": True}})
    )
    tr.session_restored(resumed=False)
    assert tr.restart_frames() == [
        {
            "clientContent": {
                "turns": [
                    {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                    {
                        "role": "model",
                        "parts": [{"text": '[called get_weather({"city":"Paris"})]'}],
                    },
                    {
                        "role": "user",
                        "parts": [{"text": '[get_weather returned {"output":"sunny"}]'}],
                    },
                    {"role": "model", "parts": [{"text": "Sunny."}]},
                ],
                "turnComplete": False,
            }
        }
    ]


def test_restart_frames_after_resume_send_no_seed(tr: GeminiTranslator) -> None:
    tr.request_response_frames("hello")
    tr.session_restored(resumed=True)
    assert tr.restart_frames() == []


def test_filter_held_drops_results_for_calls_the_resumed_session_lacks(
    tr: GeminiTranslator, caplog: pytest.LogCaptureFixture
) -> None:
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "old", "name": "f"}]}}))
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h", "resumable": True}}))
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "new", "name": "g"}]}}))
    held = tr.tool_response_frames(
        [
            RealtimeToolResponse(call_id="old", output=1),
            RealtimeToolResponse(call_id="new", output=2),
        ]
    )
    text = {"realtimeInput": {"text": "hi"}}
    tr.connection_lost()
    assert tr.session_restored(resumed=True) == []  # both were answered: nothing to report
    with caplog.at_level(logging.WARNING, logger="voicegrid.gemini"):
        kept, out = tr.filter_held([*held, text])
    # answered, but the answer never reached a session that knows the call
    assert events(out) == [("tool-call-cancelled", ToolCallCancelledEvent(call_ids=["new"]))]
    assert kept == [
        {
            "toolResponse": {
                "functionResponses": [{"id": "old", "name": "f", "response": {"output": 1}}]
            }
        },
        text,
    ]
    assert "'new'" in caplog.text


def test_filter_held_after_a_new_session_drops_every_result(tr: GeminiTranslator) -> None:
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}]}}))
    held = tr.tool_response_frames([RealtimeToolResponse(call_id="a", output=1)])
    tr.session_restored(resumed=False)
    assert tr.filter_held(held) == ([], [])  # the seed carries the result as text


def manual() -> GeminiTranslator:
    return GeminiTranslator(
        model="m", config=native_config(turn_detection=TurnDetection(mode="manual"))
    )


START = {"realtimeInput": {"activityStart": {}}}


def test_manual_activity_reopened_when_held_audio_continues_it() -> None:
    tr = manual()
    tr.activity_start_frames()  # the old socket took the activityStart, audio is held
    tr.session_restored(resumed=True)
    assert tr.filter_held([]) == ([], [])
    assert tr.restart_frames() == [START]
    assert tr.restart_frames() == []


def test_manual_activity_reopened_when_only_its_end_is_held() -> None:
    tr = manual()
    tr.activity_start_frames()
    ending = tr.request_response_frames(None)
    tr.session_restored(resumed=True)
    assert tr.filter_held(ending) == (ending, [])
    assert tr.restart_frames() == [START]


def test_manual_activity_not_reopened_when_its_start_is_held() -> None:
    tr = manual()
    held = tr.activity_start_frames()
    tr.session_restored(resumed=True)
    assert tr.filter_held(held) == (held, [])
    assert tr.restart_frames() == []


def test_manual_no_activity_no_reopen() -> None:
    tr = manual()
    tr.activity_start_frames()
    tr.request_response_frames(None)  # the old socket took start, audio and end
    tr.session_restored(resumed=True)
    tr.filter_held([])
    assert tr.restart_frames() == []


def test_restore_handle_resumes_an_exported_session(tr: GeminiTranslator) -> None:
    tr.restore_handle("exported")
    assert tr.setup_frame(resume=True)["setup"]["sessionResumption"] == {"handle": "exported"}
    assert not tr.at_resumable_point


def test_calls_after_the_handle_are_exported_and_cancelled_on_import(
    tr: GeminiTranslator,
) -> None:
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}))
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}]}}))
    assert tr.calls_after_handle == ["a"]
    tr.tool_response_frames([RealtimeToolResponse(call_id="a", output=1)])
    assert tr.calls_after_handle == []  # answered: nothing left to lose

    other = GeminiTranslator(model="m", config=native_config())
    other.restore_handle("h1", lost_calls=["b"])
    out = other.lost_calls_cancelled()
    assert names(out) == ["tool-call-cancelled"] and out[0].payload.call_ids == ["b"]
    assert other.lost_calls_cancelled() == []  # reported once
    assert other.tool_response_frames([RealtimeToolResponse(call_id="b", output=1)]) == []


def test_a_call_issued_again_after_a_cancellation_is_wanted(tr: GeminiTranslator) -> None:
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}]}}))
    tr.receive(wire({"toolCallCancellation": {"ids": ["a"]}}))
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}]}}))
    frames = tr.tool_response_frames([RealtimeToolResponse(call_id="a", output=1)])
    assert [r["id"] for r in frames[0]["toolResponse"]["functionResponses"]] == ["a"]


def test_history_is_bounded() -> None:
    tr = GeminiTranslator(model="m", config=native_config(), max_history=3)
    for i in range(10):
        tr.request_response_frames(f"q{i}")
    assert [t for _, t in tr.history] == ["q7", "q8", "q9"]


def test_configure_keeps_converters_when_formats_stay() -> None:
    tr = GeminiTranslator(
        model="m", config=RealtimeSessionConfig(input_audio=AudioFormat(sample_rate=48000))
    )
    converter = tr._input
    tr.configure(tr.config.model_copy(update={"instructions": "x"}))
    assert tr._input is converter
    tr.configure(tr.config.model_copy(update={"input_audio": AudioFormat(sample_rate=16000)}))
    assert tr._input is not converter and tr.config.instructions == "x"


# ----------------------------------------------------------------------- transparent resumption


def test_transparent_resumption_is_asked_for_in_every_setup() -> None:
    tr = GeminiTranslator(model="m", config=native_config(), transparent=True)
    assert tr.setup_frame(resume=True)["setup"]["sessionResumption"] == {"transparent": True}
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}))
    assert tr.setup_frame(resume=True)["setup"]["sessionResumption"] == {
        "handle": "h1",
        "transparent": True,
    }


@pytest.mark.parametrize(
    ("update", "index"),
    [
        ({"lastConsumedClientMessageIndex": "42"}, 42),  # int64: a string in protobuf JSON
        ({"lastConsumedClientMessageIndex": 7}, 7),
        ({"lastConsumedClientMessageIndex": "0"}, 0),
        ({}, None),  # the Developer API, or a model that sends none
        ({"lastConsumedClientMessageIndex": "x"}, None),
        ({"lastConsumedClientMessageIndex": -1}, None),
    ],
)
def test_every_resumable_handle_is_a_resumption_point(
    tr: GeminiTranslator, update: dict[str, Any], index: int | None
) -> None:
    body = {"newHandle": "h1", "resumable": True, **update}
    assert tr.receive(wire({"sessionResumptionUpdate": body})) == [ResumptionPoint(index)]
    # a non-resumable update is no resumption point, whatever it says
    assert tr.receive(wire({"sessionResumptionUpdate": {"resumable": False, **update}})) == []


def test_message_index() -> None:
    assert [message_index(v) for v in ("3", 3, True, None, "", "1.5")] == [3, 3] + [None] * 4


def test_resent_messages_decide_whether_an_activity_is_reopened() -> None:
    tr = manual()
    tr.activity_start_frames()
    resent = [START, GeminiTranslator.audio_frame(b"\x00\x00")]  # its start is re-sent
    tr.session_restored(resumed=True)
    assert tr.filter_resumed(resent, []) == (resent, [], [])
    assert tr.restart_frames() == []
    tr.session_restored(resumed=True)
    audio = [GeminiTranslator.audio_frame(b"\x00\x00")]  # only audio after it: open again
    assert tr.filter_resumed(audio, []) == (audio, [], [])
    assert tr.restart_frames() == [START]


def test_a_kept_result_is_the_same_frame(tr: GeminiTranslator) -> None:
    """The transport keeps held frames by identity: one the new session wants is not rebuilt
    (a rebuilt copy would be dropped)."""
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}))
    tr.receive(wire({"toolCall": {"functionCalls": [{"id": "a", "name": "f"}]}}))
    tr.receive(wire({"sessionResumptionUpdate": {"newHandle": "h2", "resumable": True}}))
    held = tr.tool_response_frames([RealtimeToolResponse(call_id="a", output=1)])
    tr.session_restored(resumed=True)
    kept, _ = tr.filter_held(held)
    assert kept[0] is held[0]
