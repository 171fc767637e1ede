"""The shape every provider translator has: its outputs, its frame errors, its lifecycle tables.

A translator (``providers/<provider>/translator.py``) is sans-I/O: its client hands it each parsed
server message and each command, and it answers with a list of :data:`Action`:

- :class:`Emit`: a ``protocol`` event the client emits (``on(name)`` handlers get ``payload``);
- :class:`Send`: a client frame the client sends on the live connection, in order;
- a :class:`Signal` subclass: a provider-specific control outcome the client acts on (the
  handshake finished or failed, the server announced the end of the connection, ...).

:meth:`providers.transport.WebSocketRealtimeClient._apply` carries out such a list; the client
only implements ``_on_signal`` for its own signals.

A server message that cannot be used (not JSON, not an object, a field of the wrong shape)
raises :class:`protocol.errors.ProviderProtocolError`; the transport reports it as the
recoverable ``error`` event :data:`MALFORMED_FRAME` (:func:`malformed_frame_error`) and the
session goes on. A message with several independent parts (Gemini) raises
:class:`MalformedFrame` carrying what its usable parts produced, which the transport applies
before the error.

Lifecycles inside a translator are tables ``(state, event) -> new state`` walked with
:func:`transition`; a pair the table does not list is a bug in the translator
(:class:`IllegalTransition`), never something the provider can cause.

:func:`deep_merge` is how ``RealtimeSessionConfig.provider_options`` are laid over the wire
payload a translator builds, with one semantics for every provider.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from protocol.errors import ProviderProtocolError, UsageError
from protocol.events import ErrorEvent, EventName

__all__ = [
    "MALFORMED_FRAME",
    "Action",
    "Emit",
    "Frame",
    "IllegalTransition",
    "MalformedFrame",
    "Send",
    "Signal",
    "deep_merge",
    "malformed_frame_error",
    "parse_frame",
    "transition",
]

#: A JSON object as it travels on the wire (one client or server message).
Frame = dict[str, Any]

#: The ``error`` event code of a server message that could not be used.
MALFORMED_FRAME = "malformed_frame"


@dataclass(frozen=True, slots=True)
class Emit:
    """Emit ``payload`` as event ``name``."""

    name: EventName
    payload: BaseModel


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``frame`` (a client message) on the live connection, in order."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Signal:
    """Base of the provider-specific control outcomes a client acts on (``_on_signal``)."""


Action = Emit | Send | Signal


# ---------------------------------------------------------------------------- malformed frames


class MalformedFrame(ProviderProtocolError):
    """A server message was only partly usable.

    ``salvaged`` are the actions its usable parts produced before the bad one was found; the
    client applies them, then reports the error, so nothing the translator already counted
    (e.g. a tool call it now waits a result for) goes unannounced.
    """

    def __init__(self, message: str, *, salvaged: Sequence[Action] = ()) -> None:
        super().__init__(message)
        self.salvaged: list[Action] = list(salvaged)


def parse_frame(data: str | bytes) -> Frame:
    """One server frame (text or binary JSON) as an object; ``ProviderProtocolError`` if not."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderProtocolError("not valid JSON") from exc
    if not isinstance(message, dict):
        raise ProviderProtocolError("not a JSON object")
    return message


def malformed_frame_error(why: str) -> ErrorEvent:
    """The recoverable ``error`` event for a server message that could not (all) be used."""
    return ErrorEvent(
        code=MALFORMED_FRAME, message=f"malformed frame from the provider: {why}", recoverable=True
    )


# ---------------------------------------------------------------------------- lifecycle tables

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class IllegalTransition(UsageError):
    """A translator asked its lifecycle table for a transition it does not list (a local bug)."""


def transition(table: Mapping[tuple[S, E], S], state: S, event: E, what: str) -> S:
    """The state ``event`` moves ``what`` to from ``state``; :class:`IllegalTransition` if the
    table has no such transition."""
    try:
        return table[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"{what}: no transition for {event.value!r} in state {state.value!r}"
        ) from None


# ---------------------------------------------------------------------------- provider_options


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, as a new dict; neither input is changed.

    - a dict in ``override`` merges key by key into the dict at the same key of ``base``
      (recursively; into an empty dict when ``base`` has no dict there);
    - ``None`` in ``override`` deletes that key (it is absent from the result; deleting a key
      that is not there is a no-op), so a default the translator writes can be removed;
    - anything else (a list, a string, a number, a bool) replaces the value at that key whole.

    The result shares no mutable value with either input (values are deep-copied), so changing
    a frame built from it never changes a ``RealtimeSessionConfig``.
    """
    merged = copy.deepcopy(dict(base))
    _lay_over(merged, override)
    return merged


def _lay_over(target: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            below = target.get(key)
            if not isinstance(below, dict):
                below = target[key] = {}
            _lay_over(below, value)
        else:
            target[key] = copy.deepcopy(value)
