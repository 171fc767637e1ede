"""Process plumbing shared by every ``voicegrid`` entry point (worker, gateway, simulator).

- :func:`run_main` runs the process's coroutine under uvloop when it is installed (the ``fast``
  extra: roughly half the per-frame CPU of the default loop), else under asyncio.
- :func:`stop_on_signals` turns SIGTERM / SIGINT into a stop event, so the process drains
  instead of dying mid-session; a second signal exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_main", "stop_on_signals"]

T = TypeVar("T")


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion in a new event loop (uvloop when installed); its result."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def stop_on_signals(stop: asyncio.Event, log: logging.Logger) -> None:
    """SIGTERM and SIGINT set ``stop``; a second signal raises ``SystemExit(1)``."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without finishing the drain", signum.name)
            raise SystemExit(1)
        log.info("%s: draining", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(signum, on_signal, signum)
