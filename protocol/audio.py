"""Audio formats and streaming conversion.

- G.711 mu-law / A-law <-> PCM16 through 256- and 65536-entry lookup tables (ITU-T G.711).
- Streaming resampling between the supported rates with libsoxr (``soxr.ResampleStream``):
  filter state is kept across frames, so frame edges produce no clicks. soxr was chosen over a
  numpy implementation after measuring both (see ``docs/decisions.md`` and ``bench/audio.py``).
- :class:`AudioConverter` chains decode -> resample -> encode for one direction of one session.
"""

from __future__ import annotations

import numpy as np
import soxr

from .config import AudioFormat
from .errors import AudioFormatError

__all__ = [
    "AudioConverter",
    "StreamResampler",
    "alaw_to_pcm16",
    "check_frame",
    "decode_to_pcm16",
    "encode_from_pcm16",
    "mulaw_to_pcm16",
    "pcm16_to_alaw",
    "pcm16_to_mulaw",
]


def _build_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    codes = np.arange(256, dtype=np.int32)

    # mu-law decode
    u = ~codes & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    ulaw_dec = np.where(sign != 0, -magnitude, magnitude).astype(np.int16)

    # A-law decode
    a = codes ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    alaw_dec = np.where((a & 0x80) != 0, t, -t).astype(np.int16)

    samples = np.arange(-32768, 32768, dtype=np.int32)

    # mu-law encode (Sun g711.c: 14-bit magnitude, bias 33, clip 8159)
    pcm = samples >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), pcm)
    uval = (np.minimum(seg, 7) << 4) | ((pcm >> (seg + 1)) & 0x0F)
    ulaw_enc = ((np.where(seg >= 8, 0x7F, uval) ^ mask) & 0xFF).astype(np.uint8)

    # A-law encode (13-bit magnitude segments)
    pcm = samples >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    seg = np.searchsorted(seg_end, pcm, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((pcm >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    alaw_enc = ((aval ^ mask) & 0xFF).astype(np.uint8)

    # index encode tables by the uint16 view of the sample
    order = samples.astype(np.int16).view(np.uint16).argsort()
    return ulaw_dec, alaw_dec, ulaw_enc[order], alaw_enc[order]


_ULAW_DEC, _ALAW_DEC, _ULAW_ENC, _ALAW_ENC = _build_tables()


def check_frame(frame: object, fmt: AudioFormat) -> bytes:
    """Return ``frame`` as bytes if it is valid audio in ``fmt``; raise ``AudioFormatError``."""
    if isinstance(frame, bytes):
        data = frame
    elif isinstance(frame, bytearray | memoryview):
        data = bytes(frame)
    else:
        raise AudioFormatError(
            f"audio frame must be bytes, bytearray or memoryview, got {type(frame).__name__}"
        )
    if fmt.encoding == "pcm16" and len(data) % 2:
        raise AudioFormatError(
            f"PCM16 audio frame has an odd byte count ({len(data)}); expected whole 16-bit "
            "little-endian samples"
        )
    return data


def _pcm(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype="<i2")


def mulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 mu-law bytes to PCM16 LE bytes."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 A-law bytes to PCM16 LE bytes."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def pcm16_to_mulaw(data: bytes) -> bytes:
    """Encode PCM16 LE bytes as G.711 mu-law."""
    return _ULAW_ENC[_pcm(data).view(np.uint16)].tobytes()


def pcm16_to_alaw(data: bytes) -> bytes:
    """Encode PCM16 LE bytes as G.711 A-law."""
    return _ALAW_ENC[_pcm(data).view(np.uint16)].tobytes()


def decode_to_pcm16(data: bytes, encoding: str) -> np.ndarray:
    """Decode a frame in ``encoding`` to an int16 sample array."""
    if encoding == "pcm16":
        return _pcm(data)
    if encoding == "mulaw":
        return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]
    if encoding == "alaw":
        return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]
    raise AudioFormatError(f"unknown audio encoding {encoding!r}; expected pcm16, mulaw or alaw")


def encode_from_pcm16(samples: np.ndarray, encoding: str) -> bytes:
    """Encode an int16 sample array as ``encoding`` bytes."""
    if encoding == "pcm16":
        return samples.astype("<i2", copy=False).tobytes()
    index = samples.astype(np.int16, copy=False).view(np.uint16)
    if encoding == "mulaw":
        return _ULAW_ENC[index].tobytes()
    if encoding == "alaw":
        return _ALAW_ENC[index].tobytes()
    raise AudioFormatError(f"unknown audio encoding {encoding!r}; expected pcm16, mulaw or alaw")


class StreamResampler:
    """Resample a stream of int16 frames, keeping filter state between frames."""

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        out: np.ndarray = self._stream.resample_chunk(samples, last=last)
        return out

    def flush(self) -> np.ndarray:
        """Return the samples still held in the filter (end of stream)."""
        return self.process(np.zeros(0, dtype=np.int16), last=True)


class AudioConverter:
    """Convert one direction of a session's audio from ``src`` to ``dst``, frame by frame."""

    def __init__(self, src: AudioFormat, dst: AudioFormat) -> None:
        self.src = src
        self.dst = dst
        self.passthrough = src == dst
        self._resampler = (
            StreamResampler(src.sample_rate, dst.sample_rate)
            if src.sample_rate != dst.sample_rate
            else None
        )

    def convert(self, frame: bytes) -> bytes:
        """Convert one frame; output length follows the rate ratio (the filter delays a little)."""
        if self.passthrough:
            return frame
        samples = decode_to_pcm16(frame, self.src.encoding)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return encode_from_pcm16(samples, self.dst.encoding)

    def flush(self) -> bytes:
        """Emit what the resampler still holds and reset it (end of a stream or a turn)."""
        if self._resampler is None:
            return b""
        out = encode_from_pcm16(self._resampler.flush(), self.dst.encoding)
        self._resampler = StreamResampler(self.src.sample_rate, self.dst.sample_rate)
        return out
