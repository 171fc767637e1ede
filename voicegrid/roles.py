"""``voicegrid worker`` and ``voicegrid gateway``: one long-running process each, configured from
the environment.

SIGTERM and SIGINT drain (a worker hands every session to another worker, a gateway closes its
callers with 1012 so they attach elsewhere), then the process exits 0; a second signal exits at
once. Exit code 2 means the configuration was invalid (one line on stderr names the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from ingress.gateway import run_gateway
from ingress.settings import GatewaySettings
from worker.runtime import run_worker
from worker.settings import WorkerSettings

from .runloop import run_main, stop_on_signals

__all__ = ["run_gateway_process", "run_worker_process"]

log = logging.getLogger("voicegrid")


def run_worker_process(args: argparse.Namespace, settings: WorkerSettings) -> int:
    """Run a worker until a signal drains it."""

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop, log)
        await run_worker(settings, stop_event=stop)

    run_main(main())
    return 0


def run_gateway_process(args: argparse.Namespace, settings: GatewaySettings) -> int:
    """Run a gateway until a signal drains it."""

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop, log)
        await run_gateway(settings, stop_event=stop, host=args.host, port=args.port)

    run_main(main())
    return 0
