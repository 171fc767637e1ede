"""The conversation summary a worker keeps for replay (moved to :mod:`protocol.conversation`,
which the in-process fallback client shares); re-exported here for the worker's importers."""

from __future__ import annotations

from protocol.conversation import MAX_ITEMS, MAX_TEXT_BYTES, ConversationLog, replay_config

__all__ = ["MAX_ITEMS", "MAX_TEXT_BYTES", "ConversationLog", "replay_config"]
