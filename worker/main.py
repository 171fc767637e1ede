"""``voicegrid worker``: a session worker process, configured from the environment.

SIGTERM and SIGINT drain (hand every session to another worker, then exit 0); a second signal
exits at once. Exit code 2 means the configuration was invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from protocol.errors import ConfigError
from protocol.runloop import run_main, stop_on_signals

from .runtime import run_worker
from .settings import WorkerSettings

__all__ = ["run"]

log = logging.getLogger("voicegrid.worker")


async def _main(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop, log)
    await run_worker(settings, stop_event=stop)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voicegrid worker``."""
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    run_main(_main(settings))
    return 0
