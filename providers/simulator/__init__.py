"""Loopback provider simulators: real wire protocols, a scripted simulated model.

Clients connect to them exactly as to the real service (only the URL differs); tests, the demo,
the benchmarks and ``voicegrid simulate`` (``docs/simulator.md``) use this API::

    from providers.simulator import SimScript, ToolCallScript, OpenAISimulator, GeminiSimulator

    async with OpenAISimulator(SimScript(reply_text="Hello!")) as sim:
        ...  # connect a client to sim.url, then assert on sim.connections / sim.turns

Building a new front-end: subclass :class:`BaseSimulator` and :class:`SessionHandler` (see
``base.py``) and drive a :class:`SimulatedModel` (see ``model.py``).
"""

from __future__ import annotations

from .base import BaseSimulator, HttpRejection, SessionHandler, SimConnection
from .gemini import GeminiSimulator
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
