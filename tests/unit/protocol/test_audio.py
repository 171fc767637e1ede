"""Audio conversion: G.711 against the Sun reference, resampling quality and continuity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import AudioConverter, AudioFormat, AudioFormatError
from protocol.audio import (
    alaw_to_pcm16,
    check_frame,
    mulaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_mulaw,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the Sun g711.c reference, still shipped with Python 3.11

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


def tone(rate: int, seconds: float, freq: float = 1000.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def snr_db(samples: np.ndarray, freq: float, rate: int) -> float:
    """SNR of a single tone: least-squares fit of the tone, residual as noise (delay-agnostic)."""
    x = samples.astype(np.float64)
    t = np.arange(len(x)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis.T, x, rcond=None)
    fit = basis.T @ coef
    noise = x - fit
    return float(10 * np.log10(np.sum(fit**2) / np.sum(noise**2)))


def stream(converter: AudioConverter, data: bytes, frame_bytes: int) -> bytes:
    out = bytearray()
    for i in range(0, len(data), frame_bytes):
        out += converter.convert(data[i : i + frame_bytes])
    return bytes(out)


class TestG711:
    def test_mulaw_encode_matches_reference_for_every_sample(self) -> None:
        assert pcm16_to_mulaw(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)

    def test_alaw_encode_matches_reference_for_every_sample(self) -> None:
        assert pcm16_to_alaw(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)

    def test_decode_matches_reference_for_every_code(self) -> None:
        assert mulaw_to_pcm16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
        assert alaw_to_pcm16(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)

    @pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
    def test_round_trip_keeps_a_tone(self, encoding: str) -> None:
        x = tone(8000, 1.0, freq=1013.0)
        to = AudioConverter(
            AudioFormat(sample_rate=8000),
            AudioFormat(encoding=encoding, sample_rate=8000),  # type: ignore[arg-type]
        )
        back = AudioConverter(to.dst, AudioFormat(sample_rate=8000))
        coded = to.convert(x.tobytes())
        assert len(coded) == len(x)  # one byte per sample
        y = np.frombuffer(back.convert(coded), dtype="<i2")
        assert snr_db(y, 1013.0, 8000) > 33.0  # G.711 gives ~35-38 dB on a half-scale tone


class TestResampling:
    def test_tone_keeps_40db_through_24k_16k_24k_in_20ms_frames(self) -> None:
        x = tone(24000, 2.0)
        down = AudioConverter(AudioFormat(sample_rate=24000), AudioFormat(sample_rate=16000))
        up = AudioConverter(AudioFormat(sample_rate=16000), AudioFormat(sample_rate=24000))
        mid = stream(down, x.tobytes(), 960)
        y = np.frombuffer(stream(up, mid, 640), dtype="<i2")
        steady = y[4800:-4800]  # skip the filters' start-up
        assert snr_db(steady, 1000.0, 24000) >= 40.0

    @pytest.mark.parametrize(
        ("src", "dst"),
        [(8000, 24000), (24000, 8000), (16000, 48000), (48000, 16000), (24000, 16000)],
    )
    def test_rate_ratio_is_kept_over_a_stream(self, src: int, dst: int) -> None:
        x = tone(src, 1.0, freq=440.0)
        conv = AudioConverter(AudioFormat(sample_rate=src), AudioFormat(sample_rate=dst))
        out = stream(conv, x.tobytes(), src // 50 * 2) + conv.flush()
        assert abs(len(out) // 2 - dst) <= dst // 100

    def test_no_clicks_at_frame_edges(self) -> None:
        """Streaming in 20 ms frames equals converting the whole signal at once."""
        x = tone(24000, 1.0, freq=700.0)
        whole = AudioConverter(AudioFormat(sample_rate=24000), AudioFormat(sample_rate=16000))
        ref = np.frombuffer(whole.convert(x.tobytes()) + whole.flush(), dtype="<i2").astype(int)
        framed = AudioConverter(AudioFormat(sample_rate=24000), AudioFormat(sample_rate=16000))
        got = np.frombuffer(stream(framed, x.tobytes(), 960) + framed.flush(), dtype="<i2")
        n = min(len(ref), len(got))
        assert n > 15000
        # frame edges would show as isolated large errors; the streams agree to rounding
        assert int(np.max(np.abs(ref[:n] - got[:n].astype(int)))) <= 2

    def test_same_format_is_passthrough(self) -> None:
        conv = AudioConverter(AudioFormat(), AudioFormat())
        frame = tone(24000, 0.02).tobytes()
        assert conv.convert(frame) is frame


class TestCheckFrame:
    def test_odd_pcm16_byte_count_is_rejected_with_the_count(self) -> None:
        with pytest.raises(AudioFormatError, match="odd byte count \\(3\\)"):
            check_frame(b"\x00\x01\x02", AudioFormat())

    def test_non_bytes_is_rejected_with_its_type(self) -> None:
        with pytest.raises(AudioFormatError, match="got str"):
            check_frame("hello", AudioFormat())

    def test_g711_accepts_any_length_and_bytearray(self) -> None:
        assert (
            check_frame(bytearray(b"\x01\x02\x03"), AudioFormat(encoding="mulaw", sample_rate=8000))
            == b"\x01\x02\x03"
        )

    @given(st.binary(max_size=400).filter(lambda b: len(b) % 2 == 0))
    def test_pcm16_frames_pass_unchanged(self, data: bytes) -> None:
        assert check_frame(data, AudioFormat()) == data

    def test_unsupported_rate_names_the_value(self) -> None:
        with pytest.raises(ValueError, match="sample_rate 44100 is not supported"):
            AudioFormat(sample_rate=44100)
