"""OpenAI Realtime (GA) provider: a pure translator plus the shared WebSocket transport."""

from .client import DEFAULT_URL, OpenAIRealtimeClient
from .translator import DEFAULT_TRANSCRIPTION_MODEL, OpenAITranslator

__all__ = ["DEFAULT_TRANSCRIPTION_MODEL", "DEFAULT_URL", "OpenAIRealtimeClient", "OpenAITranslator"]
