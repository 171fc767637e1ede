"""Audio in and out of the OpenAI client: validation, formats, timing, overflow."""

from __future__ import annotations

import base64
import statistics
import time
from typing import Any

import pytest

from protocol import AudioFormat, AudioFormatError, RealtimeSessionConfig
from protocol.audio import mulaw_to_pcm16, pcm16_to_mulaw
from providers.simulator import OpenAISimulator, SimScript

from ...support.timing import scaled


async def test_bad_input_raises_and_sends_nothing(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client, rec = await kit.session(sim)
        with pytest.raises(AudioFormatError, match="odd byte count"):
            client.send_audio(b"\x00\x01\x02")
        with pytest.raises(AudioFormatError, match="must be bytes"):
            client.send_audio("not audio")  # type: ignore[arg-type]
        with pytest.raises(AudioFormatError):
            client.send_audio(None)  # type: ignore[arg-type]
        good = kit.silence(20)
        client.send_audio(good)
        await sim.wait_for(lambda s: len(s.audio_in) >= len(good), timeout=scaled(5))
        await client.disconnect()
    assert sim.audio_in == good  # only the valid frame reached the server
    assert len(kit.client_frames(sim, "input_audio_buffer.append")) == 1
    assert rec.count("error") == 0


async def test_g711_mulaw_8k_passes_through(kit: Any) -> None:
    fmt = AudioFormat(encoding="mulaw", sample_rate=8000)
    async with OpenAISimulator(SimScript(reply_text="Telephone.", speed=0, tool_call=None)) as sim:
        client, rec = await kit.session(
            sim, RealtimeSessionConfig(input_audio=fmt, output_audio=fmt)
        )
        speech = pcm16_to_mulaw(kit.tone(500, rate=8000) + kit.silence(500, rate=8000))
        await kit.send(client, speech, frame_bytes=160)  # 20 ms of 8 kHz G.711
        await rec.wait_count("response-done")
        await sim.wait_for(lambda s: len(s.audio_in) >= 2 * len(speech), timeout=scaled(5))
        await client.disconnect()
    session = kit.client_frames(sim, "session.update")[0]["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    sent = b"".join(
        base64.b64decode(f["audio"]) for f in kit.client_frames(sim, "input_audio_buffer.append")
    )
    assert sent == speech  # the caller's bytes, untouched
    assert sim.audio_in == mulaw_to_pcm16(speech)
    received = b"".join(
        base64.b64decode(f["delta"]) for f in kit.server_frames(sim, "response.output_audio.delta")
    )
    audio = rec.of("audio")
    assert {a.sample_rate for a in audio} == {8000}
    assert b"".join(a.data for a in audio) == received


async def test_wideband_input_is_resampled_to_24k(kit: Any) -> None:
    fmt = AudioFormat(encoding="pcm16", sample_rate=16000)
    async with OpenAISimulator(SimScript(speed=0, tool_call=None)) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(input_audio=fmt))
        await kit.say(client, rate=16000)  # 1 s of 16 kHz audio
        await rec.wait_count("response-done")
        pushed = client.audio_stats.pushed_bytes
        await sim.wait_for(lambda s: len(s.audio_in) >= pushed, timeout=scaled(5))
        await client.disconnect()
    # 1 s at 24 kHz is 48000 bytes; the streaming resampler holds back its filter delay
    assert len(sim.audio_in) == pushed
    assert 46000 <= pushed <= 48000


async def test_send_audio_returns_at_once(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None), record=False) as sim:
        results = {}
        for rate in (24000, 16000, 8000):
            fmt = AudioFormat(encoding="pcm16", sample_rate=rate)
            client, _ = await kit.session(sim, RealtimeSessionConfig(input_audio=fmt))
            frame = kit.silence(20, rate)
            timings = []
            for _ in range(500):
                start = time.perf_counter()
                client.send_audio(frame)
                timings.append(time.perf_counter() - start)
            await client.disconnect()
            results[rate] = (statistics.median(timings), max(timings))
    # README: send_audio "never blocks"; its work is the resampling, 13.2 us per 20 ms frame pair
    # (docs/decisions.md). The bound is ~40x that, 1/40 of the frame, scaled.
    for _rate, (median, _worst) in results.items():
        assert median < scaled(0.0005)


async def test_overflow_drops_oldest_and_reports_once_per_episode(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client, rec = await kit.session(sim, max_buffer_ms=100)
        newest = b""

        def flood(_event: Any) -> None:
            nonlocal newest
            for n in range(25):  # 500 ms into a 100 ms buffer while no socket takes audio
                newest = bytes([n]) * 960
                client.send_audio(newest)

        client.on("reconnecting", flood)
        await sim.drop(1011)
        await rec.wait_count("reconnected")
        await sim.wait_for(lambda s: s.connections[-1].audio_in.endswith(newest), timeout=scaled(5))
        stats = client.audio_stats
        await client.disconnect()
    (error,) = rec.of("error")
    assert (error.code, error.recoverable) == ("audio_buffer_overflow", True)
    assert stats.dropped_frames == 20 and stats.overflow_episodes == 1
    # the newest 100 ms survived, in order
    assert sim.connections[-1].audio_in == b"".join(bytes([n]) * 960 for n in range(20, 25))
