"""voicegrid command line: one entry point for every process role.

Each sub-command imports its implementation when it runs, so ``voicegrid simulate`` does not
load the worker and ``voicegrid demo`` starts fast. Long-running roles read their configuration
from the environment; ``voicegrid <role> --help`` lists every variable with its default. A bad
value stops the process at start with exit code 2 and one line naming the variable, the value and
the expected form.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from protocol.errors import ConfigError
from redisio.settings import COMMON_ENVIRONMENT, CommonSettings, format_environment

from . import __version__
from .logs import configure_logging, console_line

__all__ = ["build_parser", "main"]

_DESCRIPTION = "Run many realtime voice-AI sessions (OpenAI Realtime, Gemini Live) at scale."
_SIM_ENVIRONMENT = {
    "VOICEGRID_SIM_REPLY": ("", "the simulated model's reply text"),
    "VOICEGRID_SIM_SPEED": ("1", "reply audio pacing: 1 real time, 0 as fast as possible"),
    "VOICEGRID_SIM_CHUNK_MS": ("20", "ms of reply audio per delta"),
    "VOICEGRID_SIM_API_KEY": ("", "secret: the only API key the simulator accepts"),
    "VOICEGRID_LOG_LEVEL": COMMON_ENVIRONMENT["VOICEGRID_LOG_LEVEL"],
    "VOICEGRID_LOG_FORMAT": COMMON_ENVIRONMENT["VOICEGRID_LOG_FORMAT"],
}


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="openai", help="openai or gemini (default openai)")
    p.add_argument("--model", default=None, help="model id (default: the provider's default)")
    p.add_argument("--live", action="store_true", help="talk to the real provider (needs API key)")
    p.add_argument("--wav", default=None, help="caller audio WAV (mono PCM16); default synthetic")
    p.add_argument("--out", default="demo-output/reply.wav", help="where to write model audio")
    p.add_argument(
        "--fast", action="store_true", help="caller and simulated model at ten times real time"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="drive the provider client directly instead of through Redis and a worker",
    )
    p.add_argument(
        "--browser",
        action="store_true",
        help="serve the browser page (gateway /demo/) for a session this backend creates; "
        "prints the link to open",
    )
    p.add_argument("--host", default="127.0.0.1", help="--browser: gateway interface (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="--browser: gateway port (8080)")


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=["openai", "gemini"], default="openai")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (8765)")
    p.add_argument(
        "--script",
        metavar="SCENARIO.json",
        default=None,
        help="scenario file: tool calls, barge-in, errors, goAway timing (docs/simulator.md); "
        "the environment overrides it",
    )
    p.epilog = format_environment(_SIM_ENVIRONMENT)


def _add_schema(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="docs/schema", help="directory of the schema files (docs/schema)"
    )
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")


def _run_schema(args: argparse.Namespace) -> int:
    from .schema import run

    return run(args)


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="passed to the benchmarks (python -m bench --help lists them)",
    )


def _add_worker(p: argparse.ArgumentParser) -> None:
    from worker.settings import ENVIRONMENT

    p.epilog = format_environment(ENVIRONMENT)


def _add_gateway(p: argparse.ArgumentParser) -> None:
    from ingress.settings import ENVIRONMENT

    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (0.0.0.0)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="WebSocket port (default: VOICEGRID_GATEWAY_PORT, 8080)",
    )
    p.epilog = format_environment(ENVIRONMENT)


def _run_worker(args: argparse.Namespace) -> int:
    from worker.settings import WorkerSettings

    from .roles import run_worker_process

    settings = WorkerSettings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return run_worker_process(args, settings)


def _run_gateway(args: argparse.Namespace) -> int:
    from ingress.settings import GatewaySettings

    from .roles import run_gateway_process

    settings = GatewaySettings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return run_gateway_process(args, settings)


def _logging_from_env(default_level: str = "INFO") -> None:
    env = dict(os.environ)
    env.setdefault("VOICEGRID_LOG_LEVEL", default_level)
    common = CommonSettings.common_from_env(env)
    configure_logging(common["log_level"], common["log_format"])


def _run_simulate(args: argparse.Namespace) -> int:
    from .simulate import run

    _logging_from_env()
    return run(args)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run

    if args.browser:
        from .browser_demo import run_browser

        _logging_from_env("WARNING")
        return run_browser(args)

    # the timeline on stdout is the demo's output; component logs only from WARNING on
    _logging_from_env("WARNING")
    return run(args)


def _run_bench(args: argparse.Namespace) -> int:
    """``voicegrid bench``: the ``bench`` package is in the source tree, not in the wheel."""
    try:
        bench_main = importlib.import_module("bench.__main__").main
    except ModuleNotFoundError as exc:
        if exc.name not in {"bench", "bench.__main__"}:
            raise
        print(
            "voicegrid bench: the benchmarks are not part of the installed package; run them "
            "from a source checkout with `make bench`",
            file=sys.stderr,
        )
        return 2
    _logging_from_env("WARNING")
    return int(bench_main(list(args.bench_args)))


_Command = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]
_COMMANDS: dict[str, _Command] = {
    "worker": ("run a session worker (configured by the environment)", _add_worker, _run_worker),
    "gateway": ("serve the caller WebSocket gateway (docs/gateway.md)", _add_gateway, _run_gateway),
    "simulate": ("serve a provider simulator on a local port", _add_simulate, _run_simulate),
    "demo": ("run a simulated (or --live) voice call end to end", _add_demo, _run_demo),
    "bench": ("run the benchmarks (from a source checkout)", _add_bench, _run_bench),
    "schema": (
        "write the JSON Schemas of the Redis contract (docs/schema/)",
        _add_schema,
        _run_schema,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicegrid", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"voicegrid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, _) in _COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, _, run = _COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except ConfigError as exc:
        message = f"voicegrid {args.command}: {exc}"
        print(console_line(message, level=logging.ERROR), file=sys.stderr)
        return 2
    except Exception:
        # through logging, so that with VOICEGRID_LOG_FORMAT=json the traceback is a record too
        logging.getLogger("voicegrid").exception("voicegrid %s failed", args.command)
        return 1


if __name__ == "__main__":
    sys.exit(main())
