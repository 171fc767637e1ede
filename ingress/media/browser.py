"""The browser page's media leg, ``/v1/media/browser?token=<media token>`` (``ingress/static``).

A browser cannot send an ``Authorization`` header on a WebSocket, so it shows a media token in
the query; the upgrade is refused (401) unless it is valid and unused. Then:

- gateway -> page: ``{"type": "media.attached", "session_id", "input_audio", "output_audio"}``
  (both PCM16 at the session's rates: the page resamples its microphone to ``input_audio``),
  every session event except audio as JSON (``{"type": <event name>, ...payload}``: transcripts,
  ``tool-call``, ``interrupted``, ...), and model audio as binary PCM16 messages, each preceded by
  ``{"type": "audio.meta", "response_id"}`` when the response changes.
- page -> gateway: binary PCM16 frames (10-100 ms) at ``input_audio``'s rate. Text messages are
  refused: the page carries media only, the backend keeps the control plane.
"""

from __future__ import annotations

from typing import Any

from protocol import AudioFormat, RealtimeSessionConfig

from .leg import CLOSE_PROTOCOL, LegRefused, MediaLeg

__all__ = ["BrowserLeg"]

#: Largest microphone frame accepted from the page, in milliseconds.
MAX_FRAME_MS = 200


class BrowserLeg(MediaLeg):
    """The browser page's leg (see the module docstring)."""

    kind = "browser"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._meta: str | bool | None = False

    def choose_formats(self, config: RealtimeSessionConfig) -> None:
        # the page speaks PCM16 at the session's rates whatever the session's encodings are
        self.leg_in = AudioFormat(encoding="pcm16", sample_rate=config.input_audio.sample_rate)
        self.leg_out = AudioFormat(encoding="pcm16", sample_rate=config.output_audio.sample_rate)

    def on_attached(self) -> None:
        assert self.leg_in is not None and self.leg_out is not None
        self.send_json(
            {
                "type": "media.attached",
                "session_id": self.session_id,
                "input_audio": self.leg_in.model_dump(mode="json"),
                "output_audio": self.leg_out.model_dump(mode="json"),
            }
        )

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            raise LegRefused(CLOSE_PROTOCOL, "the media leg takes binary PCM16 audio only")
        assert self.leg_in is not None
        if len(message) % 2 or len(message) > self.leg_in.bytes_per_second * MAX_FRAME_MS // 1000:
            raise LegRefused(
                CLOSE_PROTOCOL,
                f"audio frame of {len(message)} bytes; expected whole PCM16 samples, at most "
                f"{MAX_FRAME_MS} ms",
            )
        self.audio_in(message)

    def on_audio(self, response_id: str | None, data: bytes) -> None:
        if self._meta != response_id:
            self._meta = response_id
            self.send_json({"type": "audio.meta", "response_id": response_id})
        self.send(data)

    def on_event(self, name: str, payload: Any) -> None:
        self.send_json({"type": name, **payload.model_dump(mode="json")})
