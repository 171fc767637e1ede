"""``voicegrid simulate``: serve a provider simulator on a local port until SIGINT/SIGTERM.

``voicegrid simulate --protocol openai --host 127.0.0.1 --port 8765`` serves the OpenAI Realtime
GA protocol at ``ws://HOST:PORT/v1/realtime``; ``--protocol gemini`` serves Gemini Live. The
scripted model uses :class:`SimScript` defaults, or the scenario file given with ``--script``
(:mod:`providers.simulator.scenario`), which ``VOICEGRID_SIM_*`` environment variables override
(see :func:`script_from_env`). Frames are not
recorded (``record=False``), so a long-running simulator keeps flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys

from protocol.errors import ConfigError
from providers.simulator import BaseSimulator, GeminiSimulator, OpenAISimulator, SimScript
from providers.simulator.scenario import load_scenario

from .logs import console_line
from .runloop import run_main, stop_on_signals

__all__ = ["build_simulator", "run", "script_from_env"]

logger = logging.getLogger(__name__)


def _number(env: dict[str, str], name: str, minimum: float) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= minimum:  # also rejects NaN
        raise ConfigError(f"{name}={raw!r} is invalid; expected a number >= {minimum:g}")
    return value


def script_from_env(
    environ: dict[str, str] | None = None, *, base: SimScript | None = None
) -> SimScript:
    """The simulator script (``base``, e.g. a scenario file's, else the defaults), with
    overrides from ``VOICEGRID_SIM_*`` environment variables.

    ``VOICEGRID_SIM_REPLY`` (reply text), ``VOICEGRID_SIM_SPEED`` (>= 0, audio pacing),
    ``VOICEGRID_SIM_CHUNK_MS`` (>= 1, ms of audio per delta), ``VOICEGRID_SIM_API_KEY`` (the only
    key accepted). Raises ``ConfigError`` naming a bad value.
    """
    env = dict(os.environ if environ is None else environ)
    script = base if base is not None else SimScript()
    if "VOICEGRID_SIM_REPLY" in env:
        script.reply_text = env["VOICEGRID_SIM_REPLY"]
    speed = _number(env, "VOICEGRID_SIM_SPEED", 0)
    if speed is not None:
        script.speed = speed
    chunk_ms = _number(env, "VOICEGRID_SIM_CHUNK_MS", 1)
    if chunk_ms is not None:
        script.chunk_ms = int(chunk_ms)
    if env.get("VOICEGRID_SIM_API_KEY"):
        script.api_key = env["VOICEGRID_SIM_API_KEY"]
    return script


def build_simulator(protocol: str, host: str, port: int, script: SimScript) -> BaseSimulator:
    """The simulator for ``protocol`` (``openai`` or ``gemini``); raises ``ConfigError``."""
    if protocol == "openai":
        return OpenAISimulator(script, host=host, port=port, record=False)
    if protocol == "gemini":
        return GeminiSimulator(script, host=host, port=port, record=False)
    raise ConfigError(f"unknown simulator protocol {protocol!r}; expected 'openai' or 'gemini'")


async def _serve(simulator: BaseSimulator) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop, logger)
    async with simulator:
        # the readiness line on stdout (scripts wait for it): a JSON record when the logs are JSON
        message = f"{type(simulator).__name__} listening on {simulator.url}"
        print(console_line(message, logger=logger.name, url=simulator.url), flush=True)
        await stop.wait()
        logger.info("stopping simulator")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voicegrid simulate``; returns the process exit code."""
    try:
        scenario = getattr(args, "script", None)
        base = load_scenario(scenario) if scenario else None
        simulator = build_simulator(
            getattr(args, "protocol", "openai"),
            getattr(args, "host", "127.0.0.1"),
            int(getattr(args, "port", 8765)),
            script_from_env(base=base),
        )
    except ConfigError as exc:
        print(console_line(f"voicegrid simulate: {exc}", level=logging.ERROR), file=sys.stderr)
        return 2
    try:
        run_main(_serve(simulator))
    except OSError as exc:
        message = f"voicegrid simulate: cannot listen on {args.host}:{args.port}: {exc}"
        print(console_line(message, level=logging.ERROR), file=sys.stderr)
        return 1
    return 0
