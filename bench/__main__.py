"""Run every benchmark, print the tables, write ``bench/results.json`` and the sweep's plot.

By default the runtime benchmark sweeps 20, 50, 100 and 200 sessions (10 s each);
``--sweep`` names other loads, ``--sessions N`` runs one load, ``--quick`` is a smoke run.
``--shards P`` compares one Redis with a local Redis Cluster of P primaries instead (one load,
``--sessions``, default 100; ``--replicas R`` per primary on both sides). ``--lingers 2,5,10``
compares pump lingers (``VOICEGRID_BATCH_LINGER_MS``) at one load (``--sessions``, default 50),
alternating them round after round (``--repeat``), and splits each cost into a per-frame and a
per-round part.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import audio, lingers, runtime, shards, sweep

#: ``--quick``: a smoke run of the runtime benchmark (well under a minute).
QUICK_SESSIONS = 20
QUICK_SECONDS = 5.0
#: Measured seconds per setup and load unless ``--seconds`` says otherwise.
DEFAULT_SECONDS = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default="bench/results.json", help="the JSON results")
    parser.add_argument(
        "--plot",
        default=None,
        help="the PNG of the sweep (default: the JSON's path with .png)",
    )
    loads = parser.add_mutually_exclusive_group()
    loads.add_argument(
        "--sweep",
        default=None,
        metavar="N,N,...",
        help="loads to run, in sessions (default "
        + ",".join(map(str, sweep.DEFAULT_LOADS))
        + "; --quick: "
        + str(QUICK_SESSIONS)
        + ")",
    )
    loads.add_argument("--sessions", type=int, default=None, help="run one load of N sessions")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"measured seconds per setup and load (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each load N times (round after round) and show the run with the median "
        "whole-path CPU ratio per load (a shared host's slow spells vary runs by 20-30 %%)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_SESSIONS} sessions x {QUICK_SECONDS:g} s, 1 s warm-up, "
        "unless --sweep/--sessions/--seconds say otherwise",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="P",
        help="compare one Redis with a local Redis Cluster of P primaries (servers started "
        "here; needs redis-server) at one load, --sessions (default "
        f"{shards.DEFAULT_SESSIONS})",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="R",
        help="with --shards: replicas per primary, on both sides (default 0)",
    )
    parser.add_argument(
        "--lingers",
        default=None,
        metavar="MS,MS,...",
        help="compare these pump lingers (VOICEGRID_BATCH_LINGER_MS, worker and ingress) at one "
        f"load, --sessions (default {lingers.DEFAULT_SESSIONS}), alternating them in each of "
        "--repeat rounds",
    )
    args = parser.parse_args(argv)
    if args.lingers is not None:
        if args.shards is not None or args.sweep is not None or args.quick or args.replicas:
            parser.error(
                "--lingers runs one load: use --sessions, not --shards, --replicas, --sweep or "
                "--quick"
            )
        try:
            chosen_lingers = lingers.parse_lingers(args.lingers)
        except ValueError as exc:
            parser.error(f"--lingers {args.lingers}: {exc}")
        return _lingers(args, chosen_lingers)
    if args.shards is not None:
        if args.sweep is not None or args.quick or args.repeat != 1:
            parser.error("--shards runs one load: use --sessions, not --sweep, --quick or --repeat")
        if args.shards < 2 or args.replicas < 0:
            parser.error(
                f"--shards {args.shards} --replicas {args.replicas}: expected at least 2 "
                "shards and 0 or more replicas"
            )
        return _shards(args)
    if args.replicas:
        parser.error("--replicas goes with --shards")
    if args.sweep is not None:
        try:
            chosen = sweep.parse_loads(args.sweep)
        except ValueError as exc:
            parser.error(f"--sweep {args.sweep}: {exc}")
    elif args.sessions is not None:
        chosen = [args.sessions]
    else:
        chosen = [QUICK_SESSIONS] if args.quick else list(sweep.DEFAULT_LOADS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: expected 1 or more")
    if min(chosen) < 1 or seconds <= 0:
        parser.error(f"sessions {chosen} / --seconds {seconds}: expected positive numbers")
    out = Path(args.out)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    results["audio"] = audio.run()
    warmup_s = 1.0 if args.quick else 2.0
    if len(chosen) == 1 and args.repeat == 1:
        one = runtime.run(sessions=chosen[0], seconds=seconds, warmup_s=warmup_s)
        results["runtime"] = one
        results["sweep"] = [one]
    else:
        results["sweep"] = sweep.run(chosen, seconds=seconds, warmup_s=warmup_s, repeat=args.repeat)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out}")
    from bench.plot import plot

    print(f"plot written to {plot(results['sweep'], png)}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    sessions = args.sessions or shards.DEFAULT_SESSIONS
    seconds = args.seconds or DEFAULT_SECONDS
    if sessions < 1 or seconds <= 0:
        raise SystemExit(f"--sessions {sessions} / --seconds {seconds}: expected positive numbers")
    result = shards.run(
        sessions=sessions, seconds=seconds, warmup_s=2.0, shards=args.shards, replicas=args.replicas
    )
    _write(Path(args.out), {"shards": result})
    return 0


def _lingers(args: argparse.Namespace, chosen: list[float]) -> int:
    sessions = args.sessions or lingers.DEFAULT_SESSIONS
    seconds = args.seconds or DEFAULT_SECONDS
    if sessions < 1 or seconds <= 0 or args.repeat < 1:
        raise SystemExit(
            f"--sessions {sessions} / --seconds {seconds} / --repeat {args.repeat}: expected "
            "positive numbers"
        )
    result = lingers.run(
        lingers=chosen, sessions=sessions, seconds=seconds, warmup_s=2.0, repeat=args.repeat
    )
    _write(Path(args.out), {"lingers": result})
    return 0


def _write(out: Path, body: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        **body,
    }
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    sys.exit(main())
