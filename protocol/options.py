"""Which provider client options a caller may set, and within which bounds.

Provider options steer the worker's provider connection (buffer sizes, reconnect policy,
timeouts): left to callers, ``recycle_after_s=0.01`` or ``reconnect_attempts=1e9`` become a
reconnect storm on the workers' API key. So a session's ``options`` are checked against an
explicit allow-list: each allowed name has an :class:`OptionRule` (a kind and bounds); any other
name, or a value out of bounds, is refused with a :class:`~protocol.errors.ConfigError` naming the
option, the value and what is allowed. Each provider declares its defaults
(``providers.register_provider(..., caller_options=...)``); the operator replaces them with
``VOICEGRID_CALLER_OPTIONS`` (:func:`parse_caller_options`, docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["MAX_TEXT_CHARS", "OptionRule", "check_caller_options", "parse_caller_options"]

#: Longest text option a rule of kind ``text`` accepts by default.
MAX_TEXT_CHARS = 256

OptionKind = Literal["text", "flag", "int", "number"]
_KINDS = ("text", "flag", "int", "number")


@dataclasses.dataclass(frozen=True, slots=True)
class OptionRule:
    """One option a caller may set: ``text`` (a string of at most ``high`` characters),
    ``flag`` (true or false), ``int`` or ``number`` (within ``low..high``)."""

    kind: OptionKind
    low: float = 0
    high: float = MAX_TEXT_CHARS

    def expected(self) -> str:
        if self.kind == "text":
            return f"a string of at most {self.high:g} characters"
        if self.kind == "flag":
            return "true or false"
        what = "an integer" if self.kind == "int" else "a number"
        return f"{what} in {self.low:g}..{self.high:g}"

    def accepts(self, value: Any) -> bool:
        if self.kind == "text":
            return isinstance(value, str) and 0 < len(value) <= self.high
        if self.kind == "flag":
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        return math.isfinite(value) and self.low <= value <= self.high


def check_caller_options(
    options: Mapping[str, Any], rules: Mapping[str, OptionRule], *, provider: str
) -> None:
    """Raise ``ConfigError`` unless every option is allowed by ``rules`` and within its bounds."""
    for name, value in options.items():
        rule = rules.get(name)
        if rule is None:
            allowed = ", ".join(sorted(rules)) or "none"
            raise ConfigError(
                f"option {_shown(name)} is not one a caller may set for provider {provider!r}; "
                f"allowed: {allowed} (the operator's VOICEGRID_CALLER_OPTIONS)"
            )
        if not rule.accepts(value):
            raise ConfigError(
                f"option {name}={_shown(value)} is refused; expected {rule.expected()} "
                "(the operator's VOICEGRID_CALLER_OPTIONS)"
            )


def parse_caller_options(spec: str) -> dict[str, OptionRule] | None:
    """``VOICEGRID_CALLER_OPTIONS``: ``""`` (each provider's defaults: ``None``), ``"none"``
    (no option at all), or comma-separated ``name:text[:MAXCHARS]``, ``name:flag``,
    ``name:int:LOW..HIGH``, ``name:number:LOW..HIGH``."""
    text = spec.strip()
    if not text:
        return None
    if text == "none":
        return {}
    rules: dict[str, OptionRule] = {}
    for item in text.split(","):
        name, _, rest = item.strip().partition(":")
        kind, _, bounds = rest.partition(":")
        if not name.isidentifier() or kind not in _KINDS:
            raise ConfigError(
                f"VOICEGRID_CALLER_OPTIONS item {_shown(item.strip())} is invalid; expected "
                "name:text[:MAXCHARS], name:flag, name:int:LOW..HIGH or name:number:LOW..HIGH"
            )
        rules[name] = _rule(name, kind, bounds)
    return rules


def _rule(name: str, kind: str, bounds: str) -> OptionRule:
    try:
        if kind == "flag" and not bounds:
            return OptionRule("flag")
        if kind == "text":
            chars = int(bounds) if bounds else MAX_TEXT_CHARS
            if chars > 0:
                return OptionRule("text", high=chars)
        elif kind in ("int", "number"):
            low_text, sep, high_text = bounds.partition("..")
            low, high = float(low_text), float(high_text)
            if sep and math.isfinite(low) and math.isfinite(high) and low <= high:
                if kind == "int" and not (low.is_integer() and high.is_integer()):
                    raise ValueError(bounds)
                return OptionRule("int" if kind == "int" else "number", low=low, high=high)
    except ValueError:
        pass
    raise ConfigError(
        f"VOICEGRID_CALLER_OPTIONS bounds {_shown(bounds)} of {name} ({kind}) are invalid; "
        "expected LOW..HIGH for int and number, a character count for text, none for flag"
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
