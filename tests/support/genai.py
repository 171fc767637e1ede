"""Gemini Live frames checked against the ``google-genai`` SDK's models, for the conformance
tests (what the SDK's models lack, such as ``realtimeInputConfig`` in ``setup``, on its own)."""

from __future__ import annotations

import json

from google.genai import types as T

__all__ = ["check_client_frame", "check_server_frame"]


def check_client_frame(raw: str | bytes) -> T.LiveClientMessage:
    """The reference recipe (the SDK's setup model lacks realtimeInputConfig)."""
    msg = json.loads(raw)
    s = msg.get("setup") or {}
    ric = s.pop("realtimeInputConfig", None) or s.pop("realtime_input_config", None)
    if ric is not None:
        T.RealtimeInputConfig.model_validate(ric)
    if len(msg) != 1:
        raise ValueError(f"one top-level key expected: {list(msg)}")
    return T.LiveClientMessage.model_validate(msg)


def check_server_frame(raw: str | bytes) -> T.LiveServerMessage:
    return T.LiveServerMessage.model_validate_json(raw)
