"""Run every benchmark, print the tables and write ``bench/results.json``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import audio, runtime

#: ``--quick``: a smoke run of the runtime benchmark (well under a minute).
QUICK_SESSIONS = 20
QUICK_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default="bench/results.json")
    parser.add_argument(
        "--sessions", type=int, default=None, help="concurrent sessions (default 200)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per setup (default 20)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_SESSIONS} sessions x {QUICK_SECONDS:g} s unless given",
    )
    args = parser.parse_args(argv)
    sessions = args.sessions or (QUICK_SESSIONS if args.quick else 200)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else 20.0)
    if sessions < 1 or seconds <= 0:
        parser.error(f"--sessions {sessions} / --seconds {seconds}: expected positive numbers")
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    results["audio"] = audio.run()
    results["runtime"] = runtime.run(
        sessions=sessions, seconds=seconds, warmup_s=1.0 if args.quick else 2.0
    )
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
