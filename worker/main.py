"""``voicegrid worker``: a session worker process, configured from the environment.

SIGTERM and SIGINT drain (hand every session to another worker, then exit 0); a second signal
exits at once. Exit code 2 means the configuration was invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from protocol.errors import ConfigError

from .runtime import run_worker
from .settings import WorkerSettings

__all__ = ["run"]

log = logging.getLogger("voicegrid.worker")


async def _main(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without finishing the drain", signum.name)
            raise SystemExit(1)
        log.info("%s: draining", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, on_signal, signum)
    await run_worker(settings, stop_event=stop)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voicegrid worker``."""
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    try:
        import uvloop  # optional extra "fast": roughly halves per-frame CPU
    except ImportError:
        asyncio.run(_main(settings))
    else:
        uvloop.run(_main(settings))
    return 0
