"""The conversation an OpenAI session keeps for replay, as GA conversation items. No I/O.

A new connection starts with an empty conversation on the server, so after a reconnect the
translator re-creates it (``conversation.item.create`` frames, oldest first): user and assistant
text, function calls and their outputs. The same items are what a client exports for another
process to import after a takeover. The text sent is capped; the oldest items go first, and an
output whose call was dropped goes with it (the server would reject it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .responses import Call, CallState

__all__ = ["Conversation", "Entry"]

EntryKind = Literal["user", "assistant", "call", "output"]


@dataclass
class Entry:
    """One conversation item kept for replay (``key``: its item id, or the call id)."""

    kind: EntryKind
    key: str
    parts: list[str] = field(default_factory=list)
    text: str | None = None  # final text when known
    final_sent: bool = False
    response_id: str | None = None

    def full_text(self) -> str:
        return self.text if self.text is not None else "".join(self.parts)


class Conversation:
    """The conversation so far, in order; ``max_chars`` caps what a replay sends."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._entries: list[Entry] = []
        self._index: dict[tuple[str, str], Entry] = {}
        #: call ids whose outputs the last replay carried (a held copy is not sent again)
        self.replayed_outputs: set[str] = set()
        #: imported from another process and not replayed yet
        self.seeded = False

    def add(self, entry: Entry) -> None:
        self._index[(entry.kind, entry.key)] = entry
        self._entries.append(entry)

    def find(self, kind: EntryKind, key: str) -> Entry | None:
        return self._index.get((kind, key))

    def message(self, kind: Literal["user", "assistant"], item_id: str) -> Entry:
        """The text entry of message ``item_id`` (added when new)."""
        entry = self._index.get((kind, item_id))
        if entry is None:
            entry = Entry(kind, item_id)
            self.add(entry)
        return entry

    def pairs(self) -> list[tuple[str, str]]:
        """``(kind, text)`` per entry (the call id for calls and outputs), in order."""
        return [
            (e.kind, e.full_text() if e.kind in ("user", "assistant") else e.key)
            for e in self._entries
        ]

    def items(self, calls: Mapping[str, Call]) -> list[dict[str, Any]]:
        """The conversation as GA items, oldest first, capped at ``max_chars``: text messages,
        the function calls whose arguments were complete and not cancelled, their outputs."""
        calls_kept: set[str] = set()
        items: list[dict[str, Any]] = []
        for entry in self._entries:
            if entry.kind in ("user", "assistant"):
                text = entry.full_text()
                if not text:
                    continue
                content_type = "input_text" if entry.kind == "user" else "output_text"
                items.append(
                    {
                        "type": "message",
                        "role": entry.kind,
                        "content": [{"type": content_type, "text": text}],
                    }
                )
            elif entry.kind == "call":
                call = calls.get(entry.key)
                if call is None or call.state in (CallState.STREAMING, CallState.CANCELLED):
                    continue
                calls_kept.add(call.call_id)
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.call_id,
                        "name": call.name,
                        "arguments": call.arguments or "{}",
                    }
                )
            elif entry.key in calls_kept:
                items.append(
                    {"type": "function_call_output", "call_id": entry.key, "output": entry.text}
                )
        return self._cap(items)

    def _cap(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        def size(item: dict[str, Any]) -> int:
            return len(orjson.dumps(item))

        total = sum(size(i) for i in items)
        start = 0
        while total > self.max_chars and start < len(items):
            total -= size(items[start])
            start += 1
        kept = items[start:]
        # An output whose call was dropped would be rejected: drop it too.
        call_ids = {i["call_id"] for i in kept if i["type"] == "function_call"}
        return [i for i in kept if i["type"] != "function_call_output" or i["call_id"] in call_ids]
