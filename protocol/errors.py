"""The voicegrid error tree.

Every error voicegrid raises derives from :class:`VoicegridError`. Third-party errors
(``websockets``, ``redis``, ``pydantic``) are mapped at the boundary with ``raise ... from exc``.
Errors say what was wrong, with the offending value, and what to do::

    VoicegridError
    ├── UsageError                 you misused the API (local side)
    │   ├── ConfigError            a config value is invalid (also a ValueError)
    │   ├── AudioFormatError       an audio frame or format is invalid (also a ValueError)
    │   ├── EntryTooLarge          audio, a command or a tool output is over its size limit
    │   ├── UnsupportedCapability  the implementation cannot do what was asked
    │   ├── NotConnectedError      the call needs a live session
    │   └── InvalidSessionId       a session id is not safe to become a Redis key (also ValueError)
    ├── ProviderError              the provider reported or caused a failure (code, recoverable)
    │   ├── ProviderConnectionError   the socket could not be opened or broke (retryable)
    │   ├── ProviderAuthError         credentials or quota rejected (fatal)
    │   ├── ConfigRejectedError       the provider rejected the session config (fatal for connect)
    │   └── ProviderProtocolError     the provider broke its own wire protocol
    └── RuntimeFailure             the distributed runtime failed
        ├── StreamEntryError       a Redis stream entry or command is malformed (also ValueError)
        ├── FencedError            this worker lost the session lease; its write was rejected
        └── SessionTimeout         a session did not answer in time
"""

from __future__ import annotations

__all__ = [
    "AudioFormatError",
    "ConfigError",
    "ConfigRejectedError",
    "EntryTooLarge",
    "FencedError",
    "InvalidSessionId",
    "NotConnectedError",
    "ProviderAuthError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderProtocolError",
    "RuntimeFailure",
    "SessionTimeout",
    "StreamEntryError",
    "UnsupportedCapability",
    "UsageError",
    "VoicegridError",
]


class VoicegridError(Exception):
    """Root of every error voicegrid raises."""


class UsageError(VoicegridError):
    """The caller misused the API; fix the call, retrying will not help."""


class ConfigError(UsageError, ValueError):
    """A configuration value is invalid."""


class AudioFormatError(UsageError, ValueError):
    """An audio frame or format is invalid (wrong type, odd byte count, unsupported rate)."""


class EntryTooLarge(UsageError, ValueError):
    """Audio, a command or a tool output is larger than its limit (the message names the size,
    the limit and the setting that sets it); nothing of it was sent."""


class UnsupportedCapability(UsageError):
    """The client implementation does not support the requested operation."""


class NotConnectedError(UsageError):
    """The operation needs a connected session."""


class InvalidSessionId(UsageError, ValueError):
    """A session id failed validation before it could become part of a Redis key."""


class ProviderError(VoicegridError):
    """The provider reported an error or the connection to it failed.

    ``code`` is the provider's own error code (or close code as a string), ``recoverable`` says
    whether the session can continue.
    """

    def __init__(self, message: str, *, code: str = "provider_error", recoverable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.recoverable = recoverable

    def __str__(self) -> str:
        return f"{self.message} (code={self.code})"


class ProviderConnectionError(ProviderError):
    """The WebSocket to the provider could not be opened or broke unexpectedly."""

    def __init__(self, message: str, *, code: str = "connection_error", recoverable: bool = True):
        super().__init__(message, code=code, recoverable=recoverable)


class ProviderAuthError(ProviderError):
    """The provider rejected the credentials or the account (invalid key, quota): fatal."""

    def __init__(self, message: str, *, code: str = "auth_error", recoverable: bool = False):
        super().__init__(message, code=code, recoverable=recoverable)


class ConfigRejectedError(ProviderError):
    """The provider rejected the session configuration."""

    def __init__(self, message: str, *, code: str = "config_rejected", recoverable: bool = False):
        super().__init__(message, code=code, recoverable=recoverable)


class ProviderProtocolError(ProviderError):
    """The provider sent something its own protocol does not allow."""

    def __init__(self, message: str, *, code: str = "protocol_error", recoverable: bool = True):
        super().__init__(message, code=code, recoverable=recoverable)


class RuntimeFailure(VoicegridError):
    """The distributed runtime (Redis streams, workers) failed."""


class StreamEntryError(RuntimeFailure, ValueError):
    """A stream entry or command is malformed; the message names the field and the reason."""


class FencedError(RuntimeFailure):
    """A write was rejected because this worker no longer holds the session lease (epoch)."""


class SessionTimeout(RuntimeFailure, TimeoutError):
    """The session did not answer within the allotted time."""
