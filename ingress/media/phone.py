"""What Twilio's and Telnyx's media streams share: JSON text messages with an ``event`` name,
base64 audio in ``media.payload``, and in the other direction ``media`` payloads of 20 ms, a
``mark`` after every 100 ms (echoed once the phone played the audio before it) and ``clear``
(drop what is buffered) on barge-in (``docs/telephony.md``)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import orjson

from protocol import AudioFormat

from .leg import CLOSE_PROTOCOL, FRAME_MS, LegRefused, MediaLeg, PlayedTracker

__all__ = ["PhoneLeg", "field", "silence_byte"]

#: Longest message a phone leg accepts (a 20 ms frame is about 300 bytes of JSON).
MAX_PHONE_MESSAGE = 64 * 1024


def silence_byte(fmt: AudioFormat) -> bytes:
    """One sample of silence in ``fmt`` (G.711's zero levels; PCM16 is two bytes of it)."""
    return {"mulaw": b"\xff", "alaw": b"\xd5"}.get(fmt.encoding, b"\x00")


def field(body: dict[str, Any], path: str, kind: type) -> Any:
    """``body[a][b]`` for ``path`` ``"a.b"``, of type ``kind``; :class:`LegRefused` naming the
    field and the message when it is missing or of another type."""
    value: Any = body
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind):
        event = body.get("event")
        raise LegRefused(
            CLOSE_PROTOCOL,
            f"{event!r} message: {path} must be a {kind.__name__}, got {type(value).__name__}",
        )
    return value


class PhoneLeg(MediaLeg):
    """A telephony media stream (see the module docstring); subclasses name the fields."""

    #: The message fields that carry the stream id on outgoing messages (Twilio: streamSid).
    stream_field: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_id: str | None = None
        self.tracker: PlayedTracker | None = None
        self._pending = b""
        self._pending_response: str | None = None
        self.frames_out = 0

    # --- wire ----------------------------------------------------------------------------------

    def parse(self, message: str | bytes) -> dict[str, Any]:
        if isinstance(message, bytes) or len(message) > MAX_PHONE_MESSAGE:
            raise LegRefused(CLOSE_PROTOCOL, "expected JSON text messages")
        try:
            body = orjson.loads(message)
        except orjson.JSONDecodeError:
            raise LegRefused(CLOSE_PROTOCOL, "a message is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("event"), str):
            raise LegRefused(CLOSE_PROTOCOL, "a message is not a JSON object with an 'event'")
        return body

    def payload(self, body: dict[str, Any]) -> bytes:
        try:
            return base64.b64decode(field(body, "media.payload", str), validate=True)
        except (binascii.Error, ValueError):
            raise LegRefused(CLOSE_PROTOCOL, "'media' message: payload is not base64") from None

    def outgoing(self, event: str, **fields: Any) -> None:
        body: dict[str, Any] = {"event": event}
        if self.stream_field is not None:
            body[self.stream_field] = self.stream_id
        body.update(fields)
        self.send_json(body)

    async def read_start(self) -> dict[str, Any]:
        """The ``start`` message, after an optional ``connected`` (both providers open so)."""
        while True:
            body = self.parse(await self.recv_opening())
            event = body["event"]
            if event == "start":
                return body
            if event != "connected":
                raise LegRefused(
                    CLOSE_PROTOCOL, f"expected 'connected' then 'start', got {event!r} first"
                )

    def handle(self, body: dict[str, Any], decode: Callable[[bytes], bytes] | None = None) -> bool:
        """The messages both providers share (``media`` of the inbound track, ``mark``,
        ``dtmf``, ``stop``); False for any other event. ``decode`` maps a payload to
        :attr:`leg_in` bytes."""
        event = body["event"]
        if event == "media":
            track = body.get("media", {}).get("track", "inbound")
            if track in ("inbound", "inbound_track"):
                data = self.payload(body)
                self.audio_in(decode(data) if decode is not None else data)
        elif event == "mark":
            self.mark(field(body, "mark.name", str))
        elif event == "dtmf":
            self.dtmf(field(body, "dtmf.digit", str))
        elif event == "stop":
            self.close(1000, "stream stopped")
        else:
            return False
        return True

    # --- model audio out -----------------------------------------------------------------------

    def on_attached(self) -> None:
        assert self.leg_out is not None
        self.tracker = PlayedTracker(self.leg_out)

    def on_audio(self, response_id: str | None, data: bytes) -> None:
        if response_id != self._pending_response:
            self.flush()
            self._pending_response = response_id
        self._pending += data
        size = self._frame_bytes()
        while len(self._pending) >= size:
            chunk, self._pending = self._pending[:size], self._pending[size:]
            self._send_frame(response_id, chunk)

    def flush(self) -> None:
        """Send the tail of the current reply, padded with silence to a whole 20 ms payload."""
        if self._pending:
            assert self.leg_out is not None
            size = self._frame_bytes()
            pad = silence_byte(self.leg_out) * (size - len(self._pending))
            chunk, self._pending = self._pending + pad, b""
            self._send_frame(self._pending_response, chunk, last=True)

    def _frame_bytes(self) -> int:
        assert self.leg_out is not None
        return self.leg_out.bytes_per_second * FRAME_MS // 1000

    def _send_frame(self, response_id: str | None, chunk: bytes, *, last: bool = False) -> None:
        self.outgoing("media", media={"payload": base64.b64encode(self.encode_out(chunk)).decode()})
        self.frames_out += 1
        assert self.tracker is not None
        mark = self.tracker.sent(response_id, len(chunk), force=last)
        if mark is not None:
            self.outgoing("mark", mark={"name": mark})

    def encode_out(self, chunk: bytes) -> bytes:
        """The leg's wire bytes of ``chunk`` (identity; Telnyx L16 swaps to big-endian)."""
        return chunk

    def on_event(self, name: str, payload: Any) -> None:
        if name == "response-done":
            self.flush()

    def on_interrupted(self, response_id: str | None) -> None:
        self._pending = b""
        self._pending_response = None
        if self.tracker is not None:
            self.tracker.clear()
        self.outgoing("clear")

    # --- marks in ------------------------------------------------------------------------------

    def mark(self, name: str) -> None:
        """The phone played the audio before mark ``name``: report the position to the worker."""
        if self.tracker is None:
            return
        position = self.tracker.confirmed(name)
        if position is not None:
            self.played(*position)
