"""Telnyx media streaming, bidirectional RTP mode, on ``/v1/media/telnyx?token=<media token>``.

Call Control starts it with ``stream_url`` (this endpoint, token in the query),
``stream_track=inbound_track`` and ``stream_bidirectional_mode=rtp``. Differences from Twilio,
as Telnyx documents them:

- ``stream_id`` (top level) instead of ``streamSid``; ``sequence_number`` (a string) on every
  message; the ``start`` message's ``start.media_format`` names the codec as ``PCMU``, ``PCMA``,
  ``G722``, ``OPUS``, ``AMR-WB`` or ``L16`` with its ``sample_rate``. This leg speaks PCMU and
  PCMA at 8 kHz and L16 (big-endian linear PCM, RTP's byte order) at 8 or 16 kHz; others are
  refused with close 1008 naming them. Audio sent back uses the same codec: set
  ``stream_bidirectional_codec`` to the stream's codec (both default to PCMU).
- Media frame order is not guaranteed: messages are put back in ``sequence_number`` order
  through a small window (:data:`REORDER_WINDOW`); a gap older than the window is skipped.
- Messages to Telnyx carry no stream id: ``{"event": "media", "media": {"payload": ...}}``
  (RTP payloads of 20 ms here; Telnyx accepts 20 ms to 30 s), ``mark`` and ``clear``.
- ``mp3`` bidirectional mode (whole files, one message per second) does not fit live speech and
  is not supported.
- The token is checked on the upgrade (refused with 401 before any audio);
  ``start.client_state`` is not used.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from protocol import AudioFormat

from .leg import CLOSE_PROTOCOL, LegRefused, log
from .phone import PhoneLeg, field

__all__ = ["REORDER_WINDOW", "TELNYX_CODECS", "TelnyxLeg"]

#: Messages held back at most while waiting for a missing ``sequence_number`` (60 ms of media).
REORDER_WINDOW = 3
#: Telnyx codec name -> (encoding, sample rates this leg accepts).
TELNYX_CODECS: dict[str, tuple[str, tuple[int, ...]]] = {
    "PCMU": ("mulaw", (8000,)),
    "PCMA": ("alaw", (8000,)),
    "L16": ("pcm16", (8000, 16000)),
}


def _swap16(data: bytes) -> bytes:
    return np.frombuffer(data[: len(data) // 2 * 2], dtype=">i2").astype("<i2").tobytes()


class TelnyxLeg(PhoneLeg):
    """One Telnyx media stream (see the module docstring)."""

    kind = "telnyx"
    stream_field = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._big_endian = False
        self._next_seq: int | None = None
        self._held: list[tuple[int, int, dict[str, Any]]] = []
        self._arrival = 0

    async def opening(self) -> None:
        body = await self.read_start()
        self.stream_id = body.get("stream_id") if isinstance(body.get("stream_id"), str) else None
        media_format = field(body, "start.media_format", dict)
        codec = media_format.get("encoding")
        rate = media_format.get("sample_rate", 8000)
        known = TELNYX_CODECS.get(codec) if isinstance(codec, str) else None
        if known is None or rate not in known[1] or media_format.get("channels", 1) != 1:
            raise LegRefused(
                CLOSE_PROTOCOL,
                f"start.media_format is {codec!r} at {rate!r} Hz; expected mono PCMU or PCMA at "
                "8000 Hz, or L16 at 8000/16000 Hz",
            )
        encoding, _ = known
        self._big_endian = encoding == "pcm16"
        self.leg_in = self.leg_out = AudioFormat(encoding=encoding, sample_rate=rate)
        self._seq_of(body, first=True)

    def _seq_of(self, body: dict[str, Any], *, first: bool = False) -> int | None:
        raw = body.get("sequence_number")
        seq = int(raw) if isinstance(raw, str | int) and str(raw).isdigit() else None
        if first and seq is not None:
            self._next_seq = seq + 1
        return seq

    async def on_message(self, message: str | bytes) -> None:
        body = self.parse(message)
        seq = self._seq_of(body)
        if seq is None or self._next_seq is None:
            self._handle(body)  # no numbering to order by: as received
            return
        if seq < self._next_seq:
            if body["event"] != "media":
                self._handle(body)  # late control message: still meaningful
            return  # a late or repeated media frame: its moment has passed
        self._arrival += 1
        heapq.heappush(self._held, (seq, self._arrival, body))
        while self._held and (
            self._held[0][0] == self._next_seq or len(self._held) > REORDER_WINDOW
        ):
            seq, _, held = heapq.heappop(self._held)
            self._next_seq = seq + 1
            self._handle(held)

    def _handle(self, body: dict[str, Any]) -> None:
        if self.handle(body, _swap16 if self._big_endian else None):
            return
        if body["event"] == "error":
            detail = body.get("payload", {})
            title = detail.get("title") if isinstance(detail, dict) else None
            code = detail.get("code") if isinstance(detail, dict) else None
            log.warning(
                "telnyx stream %s of session %s: error %s %s",
                self.stream_id,
                self.session_id,
                code,
                title,
            )

    def encode_out(self, chunk: bytes) -> bytes:
        if self._big_endian:
            return np.frombuffer(chunk, dtype="<i2").astype(">i2").tobytes()
        return chunk
