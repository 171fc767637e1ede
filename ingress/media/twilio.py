"""Twilio Media Streams, bidirectional (``<Connect><Stream>``), on ``/v1/media/twilio``.

From Twilio (JSON text messages, ``event`` names): ``connected``; ``start`` with ``streamSid``,
``start.callSid``, ``start.mediaFormat`` (``audio/x-mulaw``, 8000 Hz, 1 channel) and
``start.customParameters`` (the ``<Parameter>``s of the TwiML: ``token``, the media token, and
optionally ``session``, the session id it must be for); ``media`` (``media.track``, ``chunk``,
``timestamp``, base64 mu-law ``payload``); ``dtmf`` (``dtmf.digit``); ``mark`` (``mark.name``,
echoed when the audio before it was played, or cleared); ``stop``.

To Twilio, each with ``streamSid``: ``media`` (``media.payload``: 20 ms of base64 mu-law),
``mark`` (``mark.name``) and ``clear``.

Twilio's WebSocket URL takes no query string: the token travels in ``customParameters`` and is
checked on ``start``, before any audio is accepted. With ``VOICEGRID_TWILIO_AUTH_TOKEN`` set the
upgrade must carry a valid ``X-Twilio-Signature`` (:func:`twilio_signature`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit

from protocol import AudioFormat

from .leg import CLOSE_PROTOCOL, LegRefused
from .phone import PhoneLeg, field

__all__ = ["TwilioLeg", "signature_candidates", "twilio_signature", "valid_twilio_signature"]

#: The only format Twilio Media Streams carry, both ways.
TWILIO_FORMAT = AudioFormat(encoding="mulaw", sample_rate=8000)


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 (key: the auth token) of the full URL
    followed by each POST parameter's name and value, sorted by name (none for a WebSocket)."""
    data = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_candidates(url: str) -> list[str]:
    """``url`` as given and with its default port added or removed (Twilio's own validators
    accept either, since a proxy may add or drop ``:443``)."""
    parts = urlsplit(url)
    default = {"wss": 443, "https": 443, "ws": 80, "http": 80}.get(parts.scheme)
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{parts.netloc}:{default}")
    elif parts.port == default:
        other = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
    else:
        return [url]
    return [url, urlunsplit(other)]


def valid_twilio_signature(auth_token: str, url: str, signature: str | None) -> bool:
    if not signature:
        return False
    return any(
        hmac.compare_digest(twilio_signature(auth_token, candidate).encode(), signature.encode())
        for candidate in signature_candidates(url)
    )


class TwilioLeg(PhoneLeg):
    """One Twilio Media Stream (see the module docstring)."""

    kind = "twilio"
    stream_field = "streamSid"

    async def opening(self) -> None:
        body = await self.read_start()
        self.stream_id = body.get("streamSid") or field(body, "start.streamSid", str)
        media_format = field(body, "start.mediaFormat", dict)
        encoding = media_format.get("encoding")
        rate = media_format.get("sampleRate")
        channels = media_format.get("channels", 1)
        if (encoding, rate, channels) != ("audio/x-mulaw", 8000, 1):
            raise LegRefused(
                CLOSE_PROTOCOL,
                f"start.mediaFormat is {encoding!r} {rate!r} Hz x{channels!r}; expected "
                "audio/x-mulaw 8000 Hz mono",
            )
        params = body.get("start", {}).get("customParameters") or {}
        if not isinstance(params, dict):
            raise LegRefused(CLOSE_PROTOCOL, "start.customParameters must be an object")
        token = params.get("token")
        session = params.get("session")
        self.claims = await self.redeem(
            token if isinstance(token, str) else None,
            session if isinstance(session, str) else None,
        )
        self.leg_in = self.leg_out = TWILIO_FORMAT

    async def on_message(self, message: str | bytes) -> None:
        # 'connected'/'start' again or future events: ignored, as Twilio asks of servers
        self.handle(self.parse(message))
