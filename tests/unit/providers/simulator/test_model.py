"""The provider-neutral simulated model: VAD, speech synthesis, reply plans, scripts, memory."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.audio import mulaw_to_pcm16
from protocol.errors import ConfigError
from providers.simulator.model import (
    Conversation,
    ConversationItem,
    EnergyVAD,
    SimScript,
    SimulatedModel,
    SpeakDecision,
    ToolCallDecision,
    ToolCallScript,
    VadEvent,
    encoded_chunks,
    reply_audio_ms,
    reply_plan,
    split_transcript,
    synthesize_speech,
    tool_output_text,
)

RATE = 24000


def tone(ms: int, amplitude: float = 3000.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def silence(ms: int, rate: int = RATE) -> np.ndarray:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


# ---- VAD ---------------------------------------------------------------------------------------


def test_vad_reports_start_and_stop_positions_including_the_silence() -> None:
    vad = EnergyVAD(RATE, threshold_rms=500, silence_ms=300)
    events = vad.feed(np.concatenate([silence(200), tone(1000), silence(500)]))
    assert events == [VadEvent("start", 200), VadEvent("stop", 1500)]
    assert not vad.in_speech
    assert vad.position_ms == 1700


def test_vad_gives_the_same_events_for_any_frame_split() -> None:
    signal = np.concatenate([silence(120), tone(700), silence(400), tone(300), silence(350)])
    whole = EnergyVAD(RATE, 500, 300).feed(signal)
    vad = EnergyVAD(RATE, 500, 300)
    split: list[VadEvent] = []
    for start in range(0, signal.size, 337):  # frames that straddle 10 ms windows
        split += vad.feed(signal[start : start + 337])
    assert split == whole
    assert [e.kind for e in whole] == ["start", "stop", "start", "stop"]


def test_vad_ignores_quiet_input_and_short_pauses() -> None:
    vad = EnergyVAD(RATE, 500, 300)
    assert vad.feed(tone(500, amplitude=300)) == []  # RMS ~212, under the threshold
    events = vad.feed(np.concatenate([tone(400), silence(200), tone(400)]))
    assert events == [VadEvent("start", 500)]  # a 200 ms pause does not end the turn
    assert vad.in_speech


def test_vad_reset_forgets_the_utterance() -> None:
    vad = EnergyVAD(RATE, 500, 300)
    assert vad.feed(tone(300)) == [VadEvent("start", 0)]
    vad.reset()
    assert vad.feed(silence(600)) == []  # no stop for an utterance that was reset
    assert vad.feed(tone(100)) == [VadEvent("start", 900)]


def test_vad_works_at_telephony_rate() -> None:
    vad = EnergyVAD(8000, 500, 300)
    events = vad.feed(np.concatenate([tone(500, rate=8000), silence(400, rate=8000)]))
    assert events == [VadEvent("start", 0), VadEvent("stop", 800)]


@given(
    amplitudes=st.lists(st.integers(0, 32767), min_size=1, max_size=12),
    pick=st.integers(0, 11),
    nudge=st.sampled_from([-1e-3, -1e-9, 0.0, 1e-9, 1e-3]),
)
def test_vad_decides_like_a_float32_comparison_at_the_threshold(
    amplitudes: list[int], pick: int, nudge: float
) -> None:
    """feed() compares the float32 window energies as plain floats: each window is speech
    exactly when numpy's ``energy >= threshold`` (float32) says so, also right at the edge."""
    rng = np.random.default_rng(len(amplitudes))
    windows = [(rng.uniform(-1, 1, 240) * a).astype(np.int16) for a in amplitudes]
    frames = np.stack(windows).astype(np.float32)
    energy = np.einsum("ij,ij->i", frames, frames)
    # an RMS threshold that lands on (or a hair beside) one window's energy
    target = float(energy[pick % len(windows)]) * (1 + nudge)
    vad = EnergyVAD(RATE, threshold_rms=max(target / 240, 1e-9) ** 0.5, silence_ms=10_000)
    loud = (energy >= vad._energy_threshold).tolist()
    expected = [VadEvent("start", loud.index(True) * 10)] if any(loud) else []
    assert vad.feed(np.concatenate(windows)) == expected
    assert vad.in_speech == any(loud)


def test_vad_rejects_a_rate_it_cannot_window() -> None:
    with pytest.raises(ConfigError, match="sample_rate 44101"):
        EnergyVAD(44101, 500, 300)


# ---- synthesis -----------------------------------------------------------------------------------


def test_speech_is_deterministic_and_exactly_as_long_as_asked() -> None:
    a = synthesize_speech(1500, seed=3)
    assert a == synthesize_speech(1500, seed=3)
    assert len(a) == RATE * 2 * 1500 // 1000
    assert a != synthesize_speech(1500, seed=4)


def test_speech_is_not_a_pure_tone() -> None:
    samples = pcm(synthesize_speech(2000, seed=1))
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    freqs = np.fft.rfftfreq(samples.size, 1 / RATE)
    # energy spread over many voice-band bins, not one spike
    band = spectrum[(freqs > 80) & (freqs < 4000)]
    strongest = np.sort(band)[::-1]
    assert strongest[50] > 0.05 * strongest[0]
    # energy in several octaves: fundamental region, first formant and second formant regions
    for lo, hi in ((90, 250), (250, 900), (900, 2500)):
        part = spectrum[(freqs >= lo) & (freqs < hi)]
        assert part.max() > 0.02 * spectrum.max(), (lo, hi)


def test_speech_has_a_syllable_envelope() -> None:
    samples = pcm(synthesize_speech(3000, seed=2))
    windows = samples[: samples.size // 480 * 480].reshape(-1, 480)  # 20 ms
    rms = np.sqrt(np.mean(windows**2, axis=1))
    assert rms.max() > 2000  # loud enough to trip a default VAD if looped back
    assert (rms < 0.1 * rms.max()).sum() >= 5  # gaps between syllables
    # the envelope rises and falls several times (~4.5 syllables per second)
    loud = rms > 0.3 * rms.max()
    onsets = int(np.sum(loud[1:] & ~loud[:-1]))
    assert 6 <= onsets <= 25


def test_speech_of_zero_length_is_empty() -> None:
    assert synthesize_speech(0) == b""


# ---- reply plans ---------------------------------------------------------------------------------


def test_reply_audio_length_follows_the_text_or_the_override() -> None:
    assert reply_audio_ms("Sure, I can help with that.") == 65 * 27
    assert reply_audio_ms("Hi") == 300  # a floor for very short replies
    assert reply_audio_ms("x" * 10_000) == 30_000  # and a ceiling
    assert reply_audio_ms("anything", 1234) == 1234


def test_reply_plan_chunks_cover_the_audio_and_pace_the_transcript() -> None:
    text = "The weather in Paris is sunny and warm today."
    plan = reply_plan(text, 2000, 100)
    assert len(plan.chunks) == 20
    assert plan.chunks[0].start_ms == 0 and plan.chunks[-1].end_ms == 2000
    assert all(a.end_ms == b.start_ms for a, b in zip(plan.chunks, plan.chunks[1:], strict=False))
    assert len(plan.pcm) == 2000 * 48
    assert "".join(d for c in plan.chunks for d in c.transcript) == text
    # deltas spread over the reply instead of arriving all at once
    with_text = [i for i, c in enumerate(plan.chunks) if c.transcript]
    assert with_text[0] == 0 and with_text[-1] >= 15 and len(with_text) >= 8


def test_reply_plans_are_cached_and_shared() -> None:
    assert reply_plan("Hello there.", 800, 100) is reply_plan("Hello there.", 800, 100)


def test_reply_plan_handles_a_last_short_chunk() -> None:
    plan = reply_plan("One two three.", 250, 100)
    assert [c.end_ms - c.start_ms for c in plan.chunks] == [100, 100, 50]
    assert "".join(d for c in plan.chunks for d in c.transcript) == "One two three."


def test_encoded_chunks_round_trip_pcm_and_downsample_g711() -> None:
    plan = reply_plan("Testing audio encodings.", 600, 100)
    pcm_chunks = encoded_chunks(plan, "pcm16", 24000)
    assert b"".join(base64.b64decode(c) for c in pcm_chunks) == plan.pcm
    ulaw = encoded_chunks(plan, "mulaw", 8000)
    assert [len(base64.b64decode(c)) for c in ulaw] == [800] * 6  # 100 ms at 8 kHz, 1 byte each
    decoded = pcm(mulaw_to_pcm16(b"".join(base64.b64decode(c) for c in ulaw)))
    assert np.sqrt(np.mean(decoded**2)) > 500  # still speech, not silence
    with pytest.raises(ConfigError, match="16001"):
        encoded_chunks(plan, "pcm16", 16001)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_transcript_deltas_rebuild_the_text(text: str) -> None:
    parts = split_transcript(text)
    assert "".join(parts) == text
    assert all(parts)


def test_transcript_deltas_are_words() -> None:
    assert split_transcript("Sure, I can.") == ["Sure, ", "I ", "can."]


# ---- scripts -------------------------------------------------------------------------------------


def test_script_validation_names_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="speed -1"):
        SimScript(speed=-1)
    with pytest.raises(ConfigError, match="chunk_ms 0"):
        SimScript(chunk_ms=0)
    with pytest.raises(ConfigError, match="reply_audio_ms 0"):
        SimScript(reply_audio_ms=0)
    with pytest.raises(ConfigError, match="on_turn -2"):
        ToolCallScript(on_turn=-2)


def test_script_repr_hides_the_api_key() -> None:
    text = repr(SimScript(api_key="sk-secret-value"))
    assert "sk-secret-value" not in text
    assert "api_key='***'" in text or "api_key=***" in text


def user(model: SimulatedModel, text: str = "hi") -> None:
    model.conversation.add(
        ConversationItem(id=f"u{len(model.conversation)}", kind="message", role="user", text=text)
    )


def test_default_script_calls_the_first_tool_on_turn_one_only() -> None:
    model = SimulatedModel(SimScript())
    user(model)
    first = model.decide(["get_weather", "book"])
    assert isinstance(first, ToolCallDecision)
    assert (first.name, first.arguments, first.turn) == ("get_weather", {"city": "Paris"}, 1)
    assert first.arguments_json == '{"city":"Paris"}'
    assert isinstance(model.decide(["get_weather"]), SpeakDecision)  # once per turn
    user(model)
    assert isinstance(model.decide(["get_weather"]), SpeakDecision)  # turn 2: no call


def test_no_tool_call_without_tools_or_with_tool_choice_none() -> None:
    model = SimulatedModel(SimScript())
    user(model)
    assert isinstance(model.decide([]), SpeakDecision)
    assert isinstance(model.decide(["get_weather"], "none"), SpeakDecision)
    assert isinstance(model.decide(["get_weather"], "auto"), ToolCallDecision)


def test_tool_call_on_a_later_turn_and_on_every_turn() -> None:
    model = SimulatedModel(SimScript(tool_call=ToolCallScript(on_turn=2)))
    user(model)
    assert isinstance(model.decide(["t"]), SpeakDecision)
    user(model)
    assert isinstance(model.decide(["t"]), ToolCallDecision)

    every = SimulatedModel(SimScript(tool_call=ToolCallScript(on_turn=0)))
    for _ in range(3):
        user(every)
        assert isinstance(every.decide(["t"]), ToolCallDecision)


def test_named_tool_must_be_declared_and_forced_choice_wins() -> None:
    model = SimulatedModel(SimScript(tool_call=ToolCallScript(name="book", on_turn=0)))
    user(model)
    assert isinstance(model.decide(["get_weather"]), SpeakDecision)  # 'book' not declared
    user(model)
    decision = model.decide(["get_weather", "book"])
    assert isinstance(decision, ToolCallDecision) and decision.name == "book"
    user(model)
    forced = model.decide(["get_weather", "book"], "get_weather")
    assert isinstance(forced, ToolCallDecision) and forced.name == "get_weather"


def test_reply_after_tool_output_says_the_output() -> None:
    model = SimulatedModel(SimScript())
    user(model)
    call = model.decide(["get_weather"])
    assert isinstance(call, ToolCallDecision)
    model.conversation.add(
        ConversationItem(id="fc", kind="function_call", name=call.name, call_id=call.call_id)
    )
    model.conversation.add(
        ConversationItem(
            id="out", kind="function_call_output", call_id=call.call_id, output='"sunny, 21 C"'
        )
    )
    follow_up = model.decide(["get_weather"])
    assert isinstance(follow_up, SpeakDecision)
    assert "sunny, 21 C" in follow_up.text
    assert follow_up.audio_ms == reply_audio_ms(follow_up.text)


@pytest.mark.parametrize(
    ("output", "spoken"),
    [
        ('"sunny"', "sunny"),
        ('{"city": "Paris", "temp_c": 21, "rain": false}', "city: Paris, temp_c: 21, rain: false"),
        ("[1, 2.5, null]", "1, 2.5, null"),
        ("42", "42"),
        ("not json at all", "not json at all"),
    ],
)
def test_tool_outputs_are_spoken_readably(output: str, spoken: str) -> None:
    assert tool_output_text(output) == spoken


def test_turns_count_replayed_user_messages() -> None:
    model = SimulatedModel(SimScript(tool_call=ToolCallScript(on_turn=2)))
    user(model, "replayed turn one")  # a reconnect replays turn 1 as text
    model.conversation.add(
        ConversationItem(id="a1", kind="message", role="assistant", text="answer")
    )
    user(model, "new audio turn")
    assert model.current_turn() == 2
    assert isinstance(model.decide(["t"]), ToolCallDecision)


def test_scripted_errors_fire_once_per_turn() -> None:
    model = SimulatedModel(SimScript(errors_after_turn={2: "rate_limit_exceeded"}))
    assert model.error_after(1) is None
    assert model.error_after(2) == "rate_limit_exceeded"
    assert model.error_after(2) is None


def test_usage_counts_grow_with_the_reply() -> None:
    model = SimulatedModel(SimScript())
    user(model, "what is the weather like")
    short = model.usage("ok", 500, 1000)
    long = model.usage("a much longer reply " * 5, 5000, 1000)
    assert long.output_total > short.output_total > 0
    assert short.total == short.input_total + short.output_total
    assert short.input_audio == 10 and short.output_audio == 10


# ---- conversation memory -----------------------------------------------------------------------


def item(item_id: str, role: str = "user") -> ConversationItem:
    return ConversationItem(id=item_id, kind="message", role=role, text=item_id)  # type: ignore[arg-type]


def test_conversation_inserts_where_asked() -> None:
    conv = Conversation()
    assert conv.add(item("a")) is None
    assert conv.add(item("c")) == "a"
    assert conv.add(item("b"), "a") == "a"
    assert conv.add(item("first"), "root") is None
    assert [i.id for i in conv.items] == ["first", "a", "b", "c"]
    with pytest.raises(KeyError):
        conv.add(item("x"), "missing")
    assert conv.delete("b") and not conv.delete("b")
    assert conv.get("c") is not None and conv.get("b") is None
    assert conv.texts("user") == ["first", "a", "c"]
    assert conv.user_turns() == 3


def test_pending_tool_outputs_stop_at_the_last_message() -> None:
    conv = Conversation()
    conv.add(item("u1"))
    conv.add(ConversationItem(id="o1", kind="function_call_output", call_id="c1", output="1"))
    conv.add(item("a1", "assistant"))
    assert conv.pending_tool_outputs() == []
    conv.add(ConversationItem(id="fc", kind="function_call", call_id="c2", name="t"))
    conv.add(ConversationItem(id="o2", kind="function_call_output", call_id="c2", output="2"))
    conv.add(ConversationItem(id="o3", kind="function_call_output", call_id="c3", output="3"))
    assert [i.id for i in conv.pending_tool_outputs()] == ["o2", "o3"]
