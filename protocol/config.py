"""Session configuration, tools and capabilities (``docs/architecture.md``).

All models are pydantic v2 and frozen. Invalid values raise :class:`protocol.errors.ConfigError`
through :func:`parse_config` / :func:`parse_update`; constructing a model directly raises
pydantic's ``ValidationError`` (also a ``ValueError``) naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

__all__ = [
    "SUPPORTED_SAMPLE_RATES",
    "AudioEncoding",
    "AudioFormat",
    "ProviderTarget",
    "RealtimeCapabilities",
    "RealtimeSessionConfig",
    "RealtimeSessionConfigUpdate",
    "RealtimeToolResponse",
    "ToolDefinition",
    "TurnDetection",
    "parse_config",
    "parse_update",
]

AudioEncoding = Literal["pcm16", "mulaw", "alaw"]

#: Sample rates the streaming converter supports (telephony, wideband, provider native, studio).
SUPPORTED_SAMPLE_RATES: frozenset[int] = frozenset({8000, 16000, 24000, 48000})

#: what the sample rate validator checks, stated in the JSON Schema (``voicegrid schema``)
_RATES: dict[str, JsonValue] = {"enum": [*sorted(SUPPORTED_SAMPLE_RATES)]}

_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AudioFormat(_Frozen):
    """A mono audio format: PCM16 little-endian or G.711 (mu-law / A-law) at ``sample_rate``."""

    encoding: AudioEncoding = "pcm16"
    sample_rate: int = Field(default=24000, json_schema_extra=_RATES)

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        if value not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(
                f"sample_rate {value!r} is not supported; expected one of "
                f"{sorted(SUPPORTED_SAMPLE_RATES)}"
            )
        return value

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.bytes_per_sample

    def duration_ms(self, nbytes: int) -> float:
        """Duration in milliseconds of ``nbytes`` of audio in this format."""
        return nbytes * 1000.0 / self.bytes_per_second


class TurnDetection(_Frozen):
    """Who decides when the caller's turn ends.

    ``server_vad`` / ``semantic_vad``: the provider detects speech; ``manual``: the application
    commits turns itself (``request_response``). ``None`` fields take the provider's default.
    """

    mode: Literal["server_vad", "semantic_vad", "manual"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    silence_ms: int | None = Field(default=None, ge=0, le=10_000)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=10_000)
    interrupt_response: bool = True


class ToolDefinition(_Frozen):
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str = Field(json_schema_extra={"pattern": _TOOL_NAME.pattern})
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOOL_NAME.match(value):
            raise ValueError(
                f"tool name {value!r} is invalid; expected 1-64 characters of letters, digits, "
                "'_' or '-', starting with a letter or '_'"
            )
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type", "object") != "object":
            raise ValueError(
                f"tool parameters must be a JSON Schema with type 'object', got type "
                f"{value.get('type')!r}"
            )
        return value


_TOOL_CHOICES = ("auto", "none", "required")
# the ranges the validators below check, for the JSON Schema (``voicegrid schema``)
_TEMPERATURE: dict[str, JsonValue] = {"minimum": 0.0, "maximum": 2.0}
_MAX_TOKENS: dict[str, JsonValue] = {"minimum": 1, "maximum": 1_000_000}


class _ConfigFields(_Frozen):
    """Validation shared by the full config and the partial update."""

    @field_validator("tools", check_fields=False)
    @classmethod
    def _unique_tools(cls, value: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        if value is None:
            return value
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tool names must be unique; duplicated: {dupes}")
        return value

    @field_validator("temperature", check_fields=False)
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 2.0:
            raise ValueError(f"temperature {value!r} is out of range; expected 0.0 to 2.0")
        return value

    @field_validator("max_output_tokens", check_fields=False)
    @classmethod
    def _max_tokens(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 1_000_000:
            raise ValueError(f"max_output_tokens {value!r} is out of range; expected 1..1000000")
        return value


#: At most this many fallback targets per session (each one may cost a connect attempt).
MAX_FALLBACKS = 4
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
#: client options that carry credentials or endpoints: those stay with the workers
_CREDENTIAL_OPTIONS = frozenset({"api_key", "url"})


class ProviderTarget(_Frozen):
    """One provider a session may move to when the one it runs on fails (``fallbacks``).

    ``options`` are client options (``create_client`` keyword arguments such as
    ``reconnect_attempts``), never credentials or endpoints: those are the process's (in-process:
    ``create_client(..., fallback_credentials=...)``; distributed: the worker's settings).
    ``voice`` and ``provider_options`` replace the session's own on this target (voices and
    provider options are provider-specific: ``None`` / ``{}`` means the provider's default,
    except that a target of the session's own provider keeps the session's voice when
    ``voice`` is ``None``).
    """

    provider: str = Field(json_schema_extra={"pattern": _PROVIDER_NAME.pattern})
    model: str = Field(min_length=1, max_length=200)
    options: dict[str, Any] = Field(default_factory=dict)
    voice: str | None = None
    provider_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if not _PROVIDER_NAME.match(value):
            raise ValueError(
                f"provider {value!r} is invalid; expected 1-32 letters, digits, '_' or '-'"
            )
        return value

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        given = sorted(_CREDENTIAL_OPTIONS & set(value))
        if given:
            raise ValueError(
                f"fallback options {given} are not allowed: credentials and endpoints stay with "
                "the process that connects (worker settings or fallback_credentials)"
            )
        return value

    @property
    def label(self) -> str:
        """``provider/model``: how logs, metrics and the health record name this target."""
        return f"{self.provider}/{self.model}"


class RealtimeSessionConfig(_ConfigFields):
    """Everything a session is configured with; each provider maps it to its wire shape."""

    instructions: str = ""
    tools: list[ToolDefinition] = Field(default_factory=list)
    tool_choice: str = "auto"
    voice: str | None = None
    input_audio: AudioFormat = Field(default_factory=AudioFormat)
    output_audio: AudioFormat = Field(default_factory=AudioFormat)
    turn_detection: TurnDetection = Field(default_factory=TurnDetection)
    input_transcription: bool = True
    output_transcription: bool = True
    temperature: float | None = Field(default=None, json_schema_extra=_TEMPERATURE)
    max_output_tokens: int | None = Field(default=None, json_schema_extra=_MAX_TOKENS)
    language: str | None = None
    provider_options: dict[str, Any] = Field(default_factory=dict)
    #: providers to move to, in order, when the session's provider fails (docs/operations.md,
    #: "Provider failover"); set at connect, not changed by ``update_config``
    fallbacks: list[ProviderTarget] = Field(default_factory=list, max_length=MAX_FALLBACKS)

    @model_validator(mode="after")
    def _tool_choice(self) -> RealtimeSessionConfig:
        if self.tool_choice not in _TOOL_CHOICES and self.tool_choice not in {
            t.name for t in self.tools
        }:
            raise ValueError(
                f"tool_choice {self.tool_choice!r} is invalid; expected 'auto', 'none', "
                "'required' or the name of one of the session's tools"
            )
        return self

    def for_target(self, target: ProviderTarget, *, same_provider: bool) -> RealtimeSessionConfig:
        """This config as sent to the fallback ``target`` (no fallbacks of its own)."""
        voice = target.voice if target.voice is not None or not same_provider else self.voice
        return self.model_copy(
            update={
                "voice": voice,
                "provider_options": dict(target.provider_options),
                "fallbacks": [],
            }
        )

    def merged(self, update: RealtimeSessionConfigUpdate) -> RealtimeSessionConfig:
        """This config with every field the update names replaced (validated again)."""
        changes = update.model_dump(exclude_unset=True)
        if not changes:
            return self
        return parse_config({**self.model_dump(), **changes})

    def changed_fields(self, other: RealtimeSessionConfig) -> set[str]:
        """Names of top-level fields whose values differ between ``self`` and ``other``."""
        return {
            name for name in type(self).model_fields if getattr(self, name) != getattr(other, name)
        }


class RealtimeSessionConfigUpdate(_ConfigFields):
    """A partial config: every field optional; only the fields set are changed."""

    instructions: str | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: str | None = None
    voice: str | None = None
    input_audio: AudioFormat | None = None
    output_audio: AudioFormat | None = None
    turn_detection: TurnDetection | None = None
    input_transcription: bool | None = None
    output_transcription: bool | None = None
    temperature: float | None = Field(default=None, json_schema_extra=_TEMPERATURE)
    max_output_tokens: int | None = Field(default=None, json_schema_extra=_MAX_TOKENS)
    language: str | None = None
    provider_options: dict[str, Any] | None = None


class RealtimeToolResponse(_Frozen):
    """The result of one tool call; ``output`` is any JSON value."""

    call_id: str = Field(min_length=1, max_length=256)
    output: Any = None
    name: str | None = None
    is_error: bool = False


class RealtimeCapabilities(_Frozen):
    """What an implementation can do; static per implementation.

    ``config_update`` names the strategy ``update_config`` uses: ``in-place`` (the provider
    changes the live session), ``resumed`` (reconnect with a provider resumption handle) or
    ``replayed`` (reconnect and re-send the conversation).
    """

    request_response: bool = True
    config_update: Literal["in-place", "resumed", "replayed"] = "replayed"
    session_resumption: bool = False
    tool_call_cancellation: bool = False
    message_truncation: bool = False
    input_transcription: bool = True
    output_transcription: bool = True
    manual_turn_detection: bool = True
    semantic_vad: bool = False
    voice_change_after_audio: bool = False
    native_input_sample_rate: int = 24000
    native_output_sample_rate: int = 24000
    input_encodings: tuple[AudioEncoding, ...] = ("pcm16",)
    max_connection_seconds: float | None = None


def _wrap(exc: ValidationError, what: str) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or what}: {err['msg']}"
        + (f" (got {err['input']!r})" if err.get("type") != "missing" else "")
        for err in exc.errors()[:5]
    )
    return ConfigError(f"invalid {what}: {problems}")


def parse_config(value: RealtimeSessionConfig | dict[str, Any]) -> RealtimeSessionConfig:
    """Validate a config (model or dict); raise ``ConfigError`` naming the bad field."""
    if isinstance(value, RealtimeSessionConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"session config must be a RealtimeSessionConfig or a dict, got {type(value).__name__}"
        )
    try:
        return RealtimeSessionConfig.model_validate(value)
    except ValidationError as exc:
        raise _wrap(exc, "session config") from exc


def parse_update(
    value: RealtimeSessionConfigUpdate | dict[str, Any],
) -> RealtimeSessionConfigUpdate:
    """Validate a partial config update; raise ``ConfigError`` naming the bad field."""
    if isinstance(value, RealtimeSessionConfigUpdate):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            "config update must be a RealtimeSessionConfigUpdate or a dict, got "
            f"{type(value).__name__}"
        )
    try:
        return RealtimeSessionConfigUpdate.model_validate(value)
    except ValidationError as exc:
        raise _wrap(exc, "config update") from exc
