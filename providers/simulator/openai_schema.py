"""Request validation for the OpenAI Realtime GA simulator, and the SDK schema oracle.

Two jobs:

1. :func:`check_client_event` validates a client event the way the real service does before
   acting on it: unknown or beta fields, missing required fields, wrong JSON types and bad
   values produce a :class:`Problem` with the service's error ``code`` (``unknown_parameter``,
   ``missing_required_parameter``, ``invalid_type``, ``invalid_value``, range codes such as
   ``decimal_above_max_value``), the ``param`` path (``session.audio.input.format.rate``) and a
   message in the service's wording. It is a hand-written table of the GA request shapes (no
   vendor SDK at run time).
2. :func:`validate_server_event` / :func:`validate_client_event` check a frame against the
   ``openai`` SDK's event unions with the strict recipe (discriminated ``TypeAdapter``) and, on
   top, reject keys the SDK models do not declare (the SDK models allow extras, which would hide
   a misspelt field). They import ``openai`` lazily: it is a test oracle, not a dependency.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import ProviderProtocolError

__all__ = [
    "CLIENT_EVENT_TYPES",
    "Problem",
    "check_client_event",
    "check_session",
    "validate_client_event",
    "validate_server_event",
]


@dataclass(frozen=True)
class Problem:
    """Why a client event is rejected: the OpenAI error ``code``, ``param`` path and message."""

    code: str
    message: str
    param: str | None = None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_GOT = {
    "null": "null",
    "boolean": "a boolean",
    "integer": "an integer",
    "decimal": "a decimal number",
    "string": "a string",
    "array": "an array",
    "object": "an object",
}


def _join(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _bad_type(param: str, expected: str, value: object) -> Problem:
    return Problem(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {_GOT[_json_type(value)]} "
        "instead.",
        param,
    )


class _Spec:
    expected = "a value"

    def check(self, value: Any, param: str) -> Problem | None:
        raise TypeError("abstract")  # every concrete spec overrides check


class _Any(_Spec):
    def check(self, value: Any, param: str) -> Problem | None:
        return None


class _Str(_Spec):
    expected = "a string"

    def __init__(self, *choices: str, max_len: int | None = None) -> None:
        self.choices = choices
        self.max_len = max_len

    def check(self, value: Any, param: str) -> Problem | None:
        if not isinstance(value, str):
            return _bad_type(param, self.expected, value)
        if self.choices and value not in self.choices:
            return Problem(
                "invalid_value",
                f"Invalid value: '{value}'. Supported values are: {_join(list(self.choices))}.",
                param,
            )
        if self.max_len is not None and len(value) > self.max_len:
            return Problem(
                "string_above_max_length",
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{self.max_len}, but got a string with length {len(value)} instead.",
                param,
            )
        return None


class _Bool(_Spec):
    expected = "a boolean"

    def check(self, value: Any, param: str) -> Problem | None:
        return None if isinstance(value, bool) else _bad_type(param, self.expected, value)


class _Num(_Spec):
    """A number (``integer=True``: an integer) within ``[lo, hi]``, or one of ``choices``."""

    def __init__(
        self,
        lo: float | None = None,
        hi: float | None = None,
        *,
        integer: bool = False,
        choices: tuple[int, ...] = (),
    ) -> None:
        self.lo, self.hi, self.integer, self.choices = lo, hi, integer, choices
        self.expected = "an integer" if integer else "a number"

    def check(self, value: Any, param: str) -> Problem | None:
        kind = _json_type(value)
        if kind not in ("integer", "decimal") or (self.integer and kind != "integer"):
            return _bad_type(param, self.expected, value)
        if self.choices and value not in self.choices:
            return Problem(
                "invalid_value",
                f"Invalid value: {value}. Supported values are: "
                f"{', '.join(str(c) for c in self.choices)}.",
                param,
            )
        word = "integer" if self.integer else "decimal"
        if self.lo is not None and value < self.lo:
            return Problem(
                f"{word}_below_min_value",
                f"Invalid '{param}': {word} below minimum value. Expected a value >= "
                f"{self.lo:g}, but got {value} instead.",
                param,
            )
        if self.hi is not None and value > self.hi:
            return Problem(
                f"{word}_above_max_value",
                f"Invalid '{param}': {word} above maximum value. Expected a value <= "
                f"{self.hi:g}, but got {value} instead.",
                param,
            )
        return None


class _Null(_Spec):
    def __init__(self, inner: _Spec) -> None:
        self.inner = inner
        self.expected = inner.expected

    def check(self, value: Any, param: str) -> Problem | None:
        return None if value is None else self.inner.check(value, param)


class _List(_Spec):
    expected = "an array"

    def __init__(self, item: _Spec) -> None:
        self.item = item

    def check(self, value: Any, param: str) -> Problem | None:
        if not isinstance(value, list):
            return _bad_type(param, self.expected, value)
        for index, element in enumerate(value):
            problem = self.item.check(element, f"{param}[{index}]")
            if problem is not None:
                return problem
        return None


class _Obj(_Spec):
    """An object with known ``fields`` (others: ``unknown_parameter`` unless ``open``)."""

    expected = "an object"

    def __init__(
        self,
        fields: Mapping[str, _Spec] | None = None,
        *,
        required: tuple[str, ...] = (),
        open: bool = False,
    ) -> None:
        self.fields = dict(fields or {})
        self.required = required
        self.open = open

    def check(self, value: Any, param: str) -> Problem | None:
        if not isinstance(value, dict):
            return _bad_type(param, self.expected, value)
        prefix = f"{param}." if param else ""
        for name in self.required:
            if name not in value:
                return Problem(
                    "missing_required_parameter",
                    f"Missing required parameter: '{prefix}{name}'.",
                    f"{prefix}{name}",
                )
        for name, element in value.items():
            spec = self.fields.get(name)
            if spec is None:
                if self.open:
                    continue
                return Problem(
                    "unknown_parameter", f"Unknown parameter: '{prefix}{name}'.", f"{prefix}{name}"
                )
            problem = spec.check(element, f"{prefix}{name}")
            if problem is not None:
                return problem
        return None


class _Tagged(_Spec):
    """An object whose ``type`` field selects its shape among ``variants``."""

    expected = "an object"

    def __init__(self, variants: Mapping[str, _Obj], key: str = "type") -> None:
        self.variants = dict(variants)
        self.key = key

    def check(self, value: Any, param: str) -> Problem | None:
        if not isinstance(value, dict):
            return _bad_type(param, self.expected, value)
        prefix = f"{param}." if param else ""
        if self.key not in value:
            return Problem(
                "missing_required_parameter",
                f"Missing required parameter: '{prefix}{self.key}'.",
                f"{prefix}{self.key}",
            )
        tag = value[self.key]
        problem = _Str(*self.variants).check(tag, f"{prefix}{self.key}")
        if problem is not None:
            return problem
        return self.variants[tag].check(value, param)


class _ByType(_Spec):
    """A value whose JSON type selects the spec (e.g. ``"inf"`` or an integer)."""

    def __init__(self, **by_type: _Spec) -> None:
        self.by_type = by_type
        self.expected = " or ".join(spec.expected for spec in by_type.values())

    def check(self, value: Any, param: str) -> Problem | None:
        kind = _json_type(value)
        spec = self.by_type.get(kind) or (
            self.by_type.get("decimal") if kind == "integer" else None
        )
        if spec is None:
            return _bad_type(param, self.expected, value)
        return spec.check(value, param)


# ---- GA shapes --------------------------------------------------------------------------------

_TYPE_ONLY: tuple[str, ...] = ("type",)

_FORMAT = _Tagged(
    {
        "audio/pcm": _Obj({"type": _Str(), "rate": _Num(integer=True, choices=(24000,))}),
        "audio/pcmu": _Obj({"type": _Str()}),
        "audio/pcma": _Obj({"type": _Str()}),
    }
)

_TURN_DETECTION = _Null(
    _Tagged(
        {
            "server_vad": _Obj(
                {
                    "type": _Str(),
                    "threshold": _Num(0.0, 1.0),
                    "prefix_padding_ms": _Num(0, integer=True),
                    "silence_duration_ms": _Num(0, integer=True),
                    "idle_timeout_ms": _Null(_Num(5000, 30000, integer=True)),
                    "create_response": _Bool(),
                    "interrupt_response": _Bool(),
                }
            ),
            "semantic_vad": _Obj(
                {
                    "type": _Str(),
                    "eagerness": _Str("low", "medium", "high", "auto"),
                    "create_response": _Bool(),
                    "interrupt_response": _Bool(),
                }
            ),
        }
    )
)

_TRANSCRIPTION = _Null(
    _Obj(
        {
            "model": _Str(),
            "language": _Str(),
            "prompt": _Str(),
            "delay": _Str("minimal", "low", "medium", "high", "xhigh"),
            "keywords": _List(_Str()),
            "languages": _List(_Str()),
        }
    )
)

_VOICE = _ByType(string=_Str(), object=_Obj({"id": _Str()}, required=("id",)))

_AUDIO = _Obj(
    {
        "input": _Obj(
            {
                "format": _FORMAT,
                "transcription": _TRANSCRIPTION,
                "noise_reduction": _Null(_Obj({"type": _Str("near_field", "far_field")})),
                "turn_detection": _TURN_DETECTION,
            }
        ),
        "output": _Obj({"format": _FORMAT, "voice": _VOICE, "speed": _Num(0.25, 1.5)}),
    }
)

_FUNCTION_TOOL = _Obj(
    {
        "type": _Str(),
        "name": _Str(max_len=64),
        "description": _Str(max_len=1024),
        "parameters": _Obj(open=True),
    },
    required=("name",),
)
_TOOLS = _List(
    _Tagged({"function": _FUNCTION_TOOL, "mcp": _Obj(open=True, required=("server_label",))})
)

_TOOL_CHOICE = _ByType(
    string=_Str("none", "auto", "required"),
    object=_Tagged(
        {
            "function": _Obj({"type": _Str(), "name": _Str()}, required=("name",)),
            "mcp": _Obj(
                {"type": _Str(), "server_label": _Str(), "name": _Null(_Str())},
                required=("server_label",),
            ),
        }
    ),
)

_MAX_OUTPUT_TOKENS = _ByType(integer=_Num(1, 4096, integer=True), string=_Str("inf"))
_MODALITIES = _List(_Str("text", "audio"))
_PROMPT = _Null(
    _Obj({"id": _Str(), "variables": _Obj(open=True), "version": _Null(_Str())}, required=("id",))
)

_SESSION = _Obj(
    {
        "type": _Str("realtime"),
        "model": _Str(),
        "instructions": _Str(),
        "output_modalities": _MODALITIES,
        "audio": _AUDIO,
        "tools": _TOOLS,
        "tool_choice": _TOOL_CHOICE,
        "max_output_tokens": _MAX_OUTPUT_TOKENS,
        "tracing": _Null(
            _ByType(
                string=_Str("auto"),
                object=_Obj({"workflow_name": _Str(), "group_id": _Str(), "metadata": _Any()}),
            )
        ),
        "truncation": _ByType(
            string=_Str("auto", "disabled"),
            object=_Tagged(
                {
                    "retention_ratio": _Obj(
                        {
                            "type": _Str(),
                            "retention_ratio": _Num(0.0, 1.0),
                            "token_limits": _Obj({"post_instructions": _Num(0, integer=True)}),
                        },
                        required=("retention_ratio",),
                    )
                }
            ),
        ),
        "prompt": _PROMPT,
        "include": _Null(_List(_Str("item.input_audio_transcription.logprobs"))),
        "parallel_tool_calls": _Bool(),
        "reasoning": _Obj({"effort": _Str("minimal", "low", "medium", "high", "xhigh")}),
    },
    required=_TYPE_ONLY,
)

_ITEM_COMMON: dict[str, _Spec] = {
    "type": _Str(),
    "id": _Str(max_len=64),
    "object": _Str("realtime.item"),
    "status": _Str("completed", "incomplete", "in_progress"),
}

_CONTENT = _Obj(
    {
        "type": _Str("input_text", "input_audio", "input_image", "output_text", "output_audio"),
        "text": _Str(),
        "audio": _Str(),
        "transcript": _Null(_Str()),
        "image_url": _Str(),
        "detail": _Str("auto", "low", "high"),
    },
    required=_TYPE_ONLY,
)

_ITEM = _Tagged(
    {
        "message": _Obj(
            {
                **_ITEM_COMMON,
                "role": _Str("user", "assistant", "system"),
                "content": _List(_CONTENT),
            },
            required=("role", "content"),
        ),
        "function_call": _Obj(
            {**_ITEM_COMMON, "name": _Str(), "arguments": _Str(), "call_id": _Str()},
            required=("name", "arguments"),
        ),
        "function_call_output": _Obj(
            {**_ITEM_COMMON, "call_id": _Str(), "output": _Str()},
            required=("call_id", "output"),
        ),
    }
)

# allowed content types per message role (assistant audio cannot be created by the client)
_ROLE_CONTENT: dict[str, tuple[str, ...]] = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text",),
}

_RESPONSE = _Obj(
    {
        "output_modalities": _MODALITIES,
        "instructions": _Str(),
        "tools": _TOOLS,
        "tool_choice": _TOOL_CHOICE,
        "conversation": _Str(),
        "input": _List(_Obj(open=True)),
        "metadata": _Null(_Obj(open=True)),
        "max_output_tokens": _MAX_OUTPUT_TOKENS,
        "audio": _Obj({"output": _Obj({"format": _FORMAT, "voice": _VOICE})}),
        "prompt": _PROMPT,
    }
)

_EVENT_ID = _Str(max_len=512)

_EVENTS: dict[str, _Obj] = {
    "session.update": _Obj(
        {"type": _Str(), "event_id": _EVENT_ID, "session": _Any()}, required=("session",)
    ),
    "input_audio_buffer.append": _Obj(
        {"type": _Str(), "event_id": _EVENT_ID, "audio": _Str()}, required=("audio",)
    ),
    "input_audio_buffer.commit": _Obj({"type": _Str(), "event_id": _EVENT_ID}),
    "input_audio_buffer.clear": _Obj({"type": _Str(), "event_id": _EVENT_ID}),
    "output_audio_buffer.clear": _Obj({"type": _Str(), "event_id": _EVENT_ID}),
    "conversation.item.create": _Obj(
        {"type": _Str(), "event_id": _EVENT_ID, "item": _ITEM, "previous_item_id": _Null(_Str())},
        required=("item",),
    ),
    "conversation.item.delete": _Obj(
        {"type": _Str(), "event_id": _EVENT_ID, "item_id": _Str()}, required=("item_id",)
    ),
    "conversation.item.retrieve": _Obj(
        {"type": _Str(), "event_id": _EVENT_ID, "item_id": _Str()}, required=("item_id",)
    ),
    "conversation.item.truncate": _Obj(
        {
            "type": _Str(),
            "event_id": _EVENT_ID,
            "item_id": _Str(),
            "content_index": _Num(0, integer=True),
            "audio_end_ms": _Num(0, integer=True),
        },
        required=("item_id", "content_index", "audio_end_ms"),
    ),
    "response.create": _Obj({"type": _Str(), "event_id": _EVENT_ID, "response": _RESPONSE}),
    "response.cancel": _Obj({"type": _Str(), "event_id": _EVENT_ID, "response_id": _Str()}),
}

#: Client event types the GA WebSocket endpoint accepts.
CLIENT_EVENT_TYPES: tuple[str, ...] = tuple(_EVENTS)


def check_client_event(frame: Mapping[str, Any]) -> Problem | None:
    """The first problem with a parsed client event, or None when the service would accept it.

    ``session.update``'s ``session`` is checked separately by :func:`check_session` (its param
    paths start with ``session.``).
    """
    if frame.get("type") == "input_audio_buffer.append" and _plain_append(frame):
        return None  # the hot path: one per input frame of every session
    if "type" not in frame:
        return Problem("missing_required_parameter", "Missing required parameter: 'type'.", "type")
    kind = frame["type"]
    problem = _Str(*_EVENTS).check(kind, "type")
    if problem is not None:
        return problem
    problem = _EVENTS[kind].check(dict(frame), "")
    if problem is not None:
        return problem
    if kind == "session.update":
        return check_session(frame["session"])
    if kind == "conversation.item.create":
        return _check_item_roles(frame["item"])
    return None


def _plain_append(frame: Mapping[str, Any]) -> bool:
    if not isinstance(frame.get("audio"), str):
        return False
    extra = len(frame) - 2
    return extra == 0 or (extra == 1 and isinstance(frame.get("event_id"), str))


def check_session(session: Any) -> Problem | None:
    """The first problem with a GA ``session`` object for ``session.update``, or None."""
    problem = _SESSION.check(session, "session")
    if problem is not None:
        return problem
    modalities = session.get("output_modalities")
    if isinstance(modalities, list) and len(set(modalities)) > 1:
        return Problem(
            "invalid_value",
            "Invalid value: output_modalities may hold 'audio' or 'text', not both.",
            "session.output_modalities",
        )
    return None


def _check_item_roles(item: Mapping[str, Any]) -> Problem | None:
    if item.get("type") != "message":
        return None
    allowed = _ROLE_CONTENT[item["role"]]
    for index, part in enumerate(item["content"]):
        if part["type"] not in allowed:
            return Problem(
                "invalid_value",
                f"Invalid value: '{part['type']}'. Supported values are: {_join(list(allowed))}.",
                f"item.content[{index}].type",
            )
    return None


# ---- the SDK oracle ---------------------------------------------------------------------------

# Keys the real service sends that the SDK models do not declare (observed on session objects).
_ALLOWED_EXTRAS = {("session", "object"), ("session", "id"), ("session", "expires_at")}


@functools.lru_cache(maxsize=2)
def _adapter(kind: str) -> Any:
    from typing import Annotated, Union, get_args

    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
    from pydantic import Field, TypeAdapter

    union = RealtimeServerEvent if kind == "server" else RealtimeClientEvent
    members = get_args(get_args(union)[0])
    event: Any = Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(event)


def _extras(value: Any, path: tuple[str, ...], found: list[str]) -> None:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            if (path[-1] if path else "", key) not in _ALLOWED_EXTRAS:
                found.append(".".join((*path, key)))
        for name in type(value).model_fields:
            _extras(getattr(value, name), (*path, name), found)
    elif isinstance(value, list):
        for index, element in enumerate(value):
            _extras(element, (*path, str(index)), found)


def _validate(kind: str, frame: Mapping[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        model = _adapter(kind).validate_python(dict(frame))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProviderProtocolError(
            f"{kind} event {frame.get('type')!r} violates the openai SDK schema at "
            f"{first['loc']}: {first['msg']} ({exc.error_count()} error(s))"
        ) from exc
    found: list[str] = []
    _extras(model, (), found)
    if found:
        raise ProviderProtocolError(
            f"{kind} event {frame.get('type')!r} has fields the openai SDK schema does not "
            f"declare: {found}"
        )
    return model


def validate_server_event(frame: Mapping[str, Any]) -> Any:
    """Validate a server event with the strict SDK recipe plus an undeclared-field check.

    Returns the parsed SDK model; raises ``ProviderProtocolError`` naming the location.
    Needs the ``openai`` package (dev extra).
    """
    return _validate("server", frame)


def validate_client_event(frame: Mapping[str, Any]) -> Any:
    """Validate a client event like :func:`validate_server_event` (client-event union)."""
    return _validate("client", frame)
