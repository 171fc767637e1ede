"""Loopback provider simulators: real wire protocols, a scripted simulated model.

Clients connect to them exactly as to the real service (only the URL differs); tests, the demo
and the load tests use the API pinned in ``briefs/simulator-api.md``::

    from providers.simulator import SimScript, ToolCallScript, OpenAISimulator, GeminiSimulator

    async with OpenAISimulator(SimScript(reply_text="Hello!")) as sim:
        ...  # connect a client to sim.url, then assert on sim.connections / sim.turns

``GeminiSimulator`` is imported on first use (it lives in ``providers/simulator/gemini.py``).
Building a new front-end: subclass :class:`BaseSimulator` and :class:`SessionHandler` (see
``base.py``) and drive a :class:`SimulatedModel` (see ``model.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import BaseSimulator, HttpRejection, SessionHandler, SimConnection
from .model import (
    Conversation,
    ConversationItem,
    EnergyVAD,
    SimScript,
    SimulatedModel,
    ToolCallScript,
    reply_plan,
    synthesize_speech,
)
from .openai import OpenAISimulator

__all__ = [
    "BaseSimulator",
    "Conversation",
    "ConversationItem",
    "EnergyVAD",
    "GeminiSimulator",
    "HttpRejection",
    "OpenAISimulator",
    "SessionHandler",
    "SimConnection",
    "SimScript",
    "SimulatedModel",
    "ToolCallScript",
    "reply_plan",
    "synthesize_speech",
]


def __getattr__(name: str) -> Any:
    if name == "GeminiSimulator":
        try:
            module = importlib.import_module(".gemini", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.gemini":
                raise
            raise ImportError(
                "GeminiSimulator is not available: providers/simulator/gemini.py does not exist "
                "yet; use OpenAISimulator or add the Gemini front-end"
            ) from exc
        return module.GeminiSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
