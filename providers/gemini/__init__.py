"""Gemini Live (``BidiGenerateContent``) behind the ``RealtimeAudioClient`` interface.

:class:`GeminiLiveClient` is the client (registered as ``"gemini"``);
:class:`~providers.gemini.translator.GeminiTranslator` is its pure wire translator.
"""

from .client import CONSTRAINED_URL, DEFAULT_URL, GeminiLiveClient
from .translator import GeminiTranslator

__all__ = ["CONSTRAINED_URL", "DEFAULT_URL", "GeminiLiveClient", "GeminiTranslator"]
