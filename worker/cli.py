"""``voicegrid`` command line: one entry point for every role.

Each sub-command imports its implementation lazily, so ``voicegrid simulate`` does not load the
worker and ``voicegrid demo`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# sub-command -> "module:function"; each function takes the parsed argparse namespace.
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("worker.demo:run", "run a simulated (or --live) voice call end to end"),
    "simulate": ("providers.simulator.cli:run", "serve a provider simulator on a local port"),
    "bench": ("worker.cli:run_bench", "run the benchmarks (from a source checkout)"),
    "worker": ("worker.main:run", "run a session worker (configuration from the environment)"),
    "gateway": ("ingress.gateway:run", "serve the caller WebSocket gateway (docs/gateway.md)"),
}


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="openai", help="openai | gemini (default openai)")
    p.add_argument("--model", default=None, help="model id (default: the provider's default)")
    p.add_argument("--live", action="store_true", help="talk to the real provider (needs API key)")
    p.add_argument("--wav", default=None, help="caller audio WAV (mono PCM16); default synthetic")
    p.add_argument("--out", default="demo-output/reply.wav", help="where to write model audio")
    p.add_argument("--fast", action="store_true", help="send caller audio faster than real time")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="drive the provider client directly instead of through Redis and a worker",
    )


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=["openai", "gemini"], default="openai")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="passed to the benchmarks: --out, --sessions, --seconds, --quick",
    )


def _add_worker(p: argparse.ArgumentParser) -> None:
    # configuration is 12-factor: every setting comes from the environment (worker.settings)
    p.epilog = "configured by environment variables: see worker.settings.ENVIRONMENT"


def _add_gateway(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="WebSocket port (default: VOICEGRID_GATEWAY_PORT, 8080)",
    )
    p.epilog = "other settings come from the environment: see worker.settings.ENVIRONMENT"


_ADDERS = {
    "demo": _add_demo,
    "simulate": _add_simulate,
    "bench": _add_bench,
    "worker": _add_worker,
    "gateway": _add_gateway,
}


def run_bench(args: argparse.Namespace) -> int:
    """``voicegrid bench``: the ``bench`` package lives in the source tree, not the wheel."""
    try:
        bench_main = importlib.import_module("bench.__main__").main
    except ModuleNotFoundError:
        print("voicegrid bench: run it from a source checkout (make bench)", file=sys.stderr)
        return 2
    return int(bench_main(list(args.bench_args)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicegrid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _ADDERS[name](p)
    return parser


def configure_logging() -> None:
    """Logging from ``VOICEGRID_LOG_LEVEL`` and ``VOICEGRID_LOG_FORMAT`` (text|json)."""
    level = os.environ.get("VOICEGRID_LOG_LEVEL", "INFO").upper()
    fmt = os.environ.get("VOICEGRID_LOG_FORMAT", "text")
    if fmt == "json":
        pattern = (
            '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":%(message)r}'
        )
    else:
        pattern = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=pattern)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    target, _ = _COMMANDS[args.command]
    module_name, _, func = target.partition(":")
    result = getattr(importlib.import_module(module_name), func)(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
