"""Media legs: phone (Twilio, Telnyx) and browser WebSockets that carry the audio of a session the
application's backend created and controls (``docs/telephony.md``)."""

from .routes import MEDIA_PREFIX, PAGE_PREFIX, MediaRouter

__all__ = ["MEDIA_PREFIX", "PAGE_PREFIX", "MediaRouter"]
