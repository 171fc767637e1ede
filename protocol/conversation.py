"""The conversation summary a worker keeps for replay after a takeover (``docs/streams.md``).

The worker records what was said (final transcripts), tool calls and tool results, bounded by
item count and text size, and saves it in the session record. A new owner whose provider client
cannot restore the session itself (``RealtimeAudioClient.import_state`` returned ``None``)
re-sends it as context in the instructions: the ``replayed`` strategy.
"""

from __future__ import annotations

from typing import Any

import orjson

from .config import RealtimeSessionConfig

__all__ = ["MAX_ITEMS", "MAX_TEXT_BYTES", "ConversationLog", "replay_config"]

#: Items kept (oldest dropped first).
MAX_ITEMS = 64
#: Bytes of JSON kept (oldest dropped first), so the record stays small.
MAX_TEXT_BYTES = 16_384


class ConversationLog:
    """A bounded, JSON-serialisable log of the conversation so far."""

    def __init__(self, items: list[dict[str, Any]] | None = None) -> None:
        self.items: list[dict[str, Any]] = list(items or [])
        self.changed = False
        self._trim()

    def add_message(self, role: str, text: str) -> None:
        if text.strip():
            self._add({"role": role, "text": text})

    def add_tool_call(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        self._add({"role": "tool_call", "call_id": call_id, "name": name, "arguments": arguments})

    def add_tool_result(self, call_id: str, output: Any) -> None:
        self._add({"role": "tool_result", "call_id": call_id, "output": output})

    def add_tool_cancelled(self, call_id: str) -> None:
        """The call's result is no longer wanted (``tool-call-cancelled`` was published)."""
        self._add({"role": "tool_cancelled", "call_id": call_id})

    def pending_calls(self) -> list[str]:
        """Ids of the logged tool calls with neither a result nor a cancellation, oldest first."""
        pending: dict[str, None] = {}
        for item in self.items:
            role, call_id = item.get("role"), item.get("call_id")
            if not isinstance(call_id, str):
                continue
            if role == "tool_call":
                pending[call_id] = None
            elif role in ("tool_result", "tool_cancelled"):
                pending.pop(call_id, None)
        return list(pending)

    def cancelled_calls(self) -> set[str]:
        """Ids of the logged calls that were cancelled (a late result for one is dropped)."""
        return {
            item["call_id"]
            for item in self.items
            if item.get("role") == "tool_cancelled" and isinstance(item.get("call_id"), str)
        }

    def _add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.changed = True
        self._trim()

    def _trim(self) -> None:
        del self.items[:-MAX_ITEMS]
        while len(self.items) > 1 and len(orjson.dumps(self.items)) > MAX_TEXT_BYTES:
            del self.items[0]

    def dumps(self) -> bytes:
        """The log as JSON (and mark it saved)."""
        self.changed = False
        return orjson.dumps(self.items)

    def summary(self) -> str:
        """The conversation as plain text lines, oldest first."""
        lines = []
        for item in self.items:
            role = item.get("role")
            if role in ("user", "assistant"):
                lines.append(f"{role}: {item.get('text', '')}")
            elif role == "tool_call":
                args = orjson.dumps(item.get("arguments", {})).decode()
                lines.append(f"assistant called tool {item.get('name')}({args})")
            elif role == "tool_result":
                output = orjson.dumps(item.get("output")).decode()
                lines.append(f"tool result for {item.get('call_id')}: {output}")
            elif role == "tool_cancelled":
                lines.append(f"tool call {item.get('call_id')} was cancelled (no result)")
        return "\n".join(lines)


def replay_config(config: RealtimeSessionConfig, log: ConversationLog) -> RealtimeSessionConfig:
    """``config`` with the conversation so far appended to its instructions (if any)."""
    summary = log.summary()
    if not summary:
        return config
    context = (
        "The conversation so far (it continues after a reconnect; do not repeat or greet "
        "again):\n" + summary
    )
    instructions = f"{config.instructions}\n\n{context}" if config.instructions else context
    return config.model_copy(update={"instructions": instructions})
