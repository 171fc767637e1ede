"""Numbered caller frames: each carries its sequence number, so a simulator's decoded input shows
which frame reached which provider connection, in which order and how often.

Sample 0 is :data:`MAGIC`, sample 1 the sequence number; the rest is speech (a loud square wave
the simulators' energy VAD hears, at any sample rate) or silence.
"""

from __future__ import annotations

import struct

__all__ = ["MAGIC", "frame_numbers", "numbered", "numbered_frame"]

MAGIC = 77  # small: a silent frame must stay below the VAD threshold


def numbered(seq: int, body: bytes) -> bytes:
    """A caller frame that carries ``seq`` in front of ``body`` (PCM16 of the frame's length
    minus 4 bytes)."""
    return struct.pack("<hh", MAGIC, seq) + body


def numbered_frame(seq: int, frame_bytes: int, *, speech: bool) -> bytes:
    """Caller frame number ``seq``, ``frame_bytes`` long (640: 20 ms at 16 kHz; 960: at 24 kHz)."""
    samples = frame_bytes // 2 - 2
    body = (
        b"".join(struct.pack("<h", 6000 if (i // 12) % 2 else -6000) for i in range(samples))
        if speech
        else b"\x00\x00" * samples
    )
    return numbered(seq, body)


def frame_numbers(audio: bytes, frame_bytes: int) -> list[int]:
    """The sequence numbers of the numbered frames in ``audio`` (one connection's input)."""
    seqs = []
    for offset in range(0, len(audio) - frame_bytes + 1, frame_bytes):
        marker, seq = struct.unpack_from("<hh", audio, offset)
        if marker == MAGIC:
            seqs.append(seq)
    return seqs
