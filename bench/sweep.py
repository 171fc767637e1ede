"""The runtime benchmark at several loads: one run per load, one table with a column per load.

Each load is a whole :func:`bench.runtime.run` (its own simulator, worker and Redis namespace,
the in-process baseline and then the distributed setup), one after the other; its ``summary``
and ``targets`` feed the table printed here and the plot (:mod:`bench.plot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import runtime

__all__ = ["DEFAULT_LOADS", "median_run", "parse_loads", "print_table", "run"]

#: ``make bench``: the loads issue 9 states its targets at.
DEFAULT_LOADS = (20, 50, 100, 200)
#: The table fits this many columns (more loads wrap into further blocks).
WIDTH = 100
_LABEL = 32
_CELL = 17


def parse_loads(text: str) -> list[int]:
    """``"20,50,100"`` -> ``[20, 50, 100]``; raises ``ValueError`` naming a bad entry."""
    loads: list[int] = []
    for part in text.split(","):
        value = int(part.strip())
        if value < 1:
            raise ValueError(f"{value} sessions: expected at least 1")
        loads.append(value)
    if len(set(loads)) != len(loads):
        raise ValueError(f"{text!r}: a load appears twice")
    return sorted(loads)


def run(
    loads: Sequence[int], *, seconds: float, warmup_s: float, repeat: int = 1
) -> list[dict[str, Any]]:
    """Run the runtime benchmark at each load (ascending), ``repeat`` times per load (round
    after round, so a slow spell of a shared host hits every load); print each run's table,
    then the sweep table. Returns one result per load: with ``repeat`` > 1 the run with the
    median whole-path ratio (:func:`median_run`), the others' ratios under ``repeats``."""
    order = sorted(loads)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in order}
    for round_ in range(1, repeat + 1):
        for index, sessions in enumerate(order, 1):
            what = f"load {index}/{len(order)}: {sessions} sessions"
            if repeat > 1:
                what += f", round {round_}/{repeat}"
            print(f"\n=== {what}", flush=True)
            runs[sessions].append(
                runtime.run(sessions=sessions, seconds=seconds, warmup_s=warmup_s)
            )
    results = [median_run(runs[n]) for n in order]
    print_table(results)
    return results


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Of several runs of one load, the one whose (worker + ingress + Redis) / client ratio is
    the median (the lower middle of an even count): a whole run, so its rows stay consistent
    with each other. ``repeats`` lists every run's headline numbers."""
    if len(runs) == 1:
        return runs[0]

    def ratio(result: dict[str, Any]) -> float:
        value = result["summary"]["distributed_to_client"]
        return float("inf") if value is None else float(value)

    ranked = sorted(runs, key=ratio)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    keys = (
        "distributed_to_client",
        "worker_to_client",
        "redis_ms",
        "added_in_p99_ms",
        "added_out_p99_ms",
    )
    chosen["repeats"] = [{key: run["summary"][key] for key in keys} for run in runs]
    return chosen


Cell = Callable[[dict[str, Any]], str]


def _num(key: str, spec: str = ".2f") -> Cell:
    def cell(result: dict[str, Any]) -> str:
        value = result["summary"][key]
        return "-" if value is None else format(value, spec)

    return cell


def _pair(a: str, b: str, spec: str = ".2f") -> Cell:
    def cell(result: dict[str, Any]) -> str:
        summary = result["summary"]
        return f"{format(summary[a], spec)} / {format(summary[b], spec)}"

    return cell


def _check(key: str, spec: str = ".2f") -> Cell:
    """``PASS 1.23<=1.6``, ``MISS 1.90>1.6``, or the bare value where the load has no target."""

    def cell(result: dict[str, Any]) -> str:
        check = result["targets"][key]
        value = "-" if check["value"] is None else format(check["value"], spec)
        if check["pass"] is None:
            return value
        limit = format(check["target"], "g")
        return f"PASS {value}<={limit}" if check["pass"] else f"MISS {value}>{limit}"

    return cell


#: (label, cell) rows of the sweep table; a ``None`` cell makes a heading line.
ROWS: tuple[tuple[str, Cell | None], ...] = (
    ("CPU ms per session-second", None),
    ("  in-process client", _num("in_process_client_ms")),
    ("  worker", _num("worker_ms")),
    ("  ingress (callers excluded)", _num("ingress_ms")),
    ("  Redis", _num("redis_ms")),
    ("  worker + ingress + Redis", _num("distributed_ms")),
    (
        "  simulator in-proc / distrib.",
        _pair("simulator_in_process_ms", "simulator_distributed_ms"),
    ),
    ("  callers' own (subtracted)", _num("callers_ms")),
    ("ratios and targets at this load", None),
    ("  (worker+ingress+Redis)/client", _check("distributed_cpu_ratio")),
    ("    callers on both sides", _num("distributed_to_client_with_callers")),
    ("  worker / in-process client", _check("worker_cpu_ratio")),
    ("  Redis ms/session-s", _check("redis_ms_per_session_s")),
    ("  Redis cores", _check("redis_cores", ".3f")),
    ("added latency ms", None),
    ("  caller->provider p50", _num("added_in_p50_ms", ".1f")),
    ("  caller->provider p99", _check("p99_added_in_ms", ".1f")),
    ("  provider->caller p50", _num("added_out_p50_ms", ".1f")),
    ("  provider->caller p99", _check("p99_added_out_ms", ".1f")),
    ("  audio out, distributed/in-proc", _num("audio_out_ratio", ".3f")),
    ("machine", None),
    (
        "  cores busy in-proc / distrib.",
        _pair("cores_busy_in_process", "cores_busy_distributed"),
    ),
    ("    irq+softirq in distributed", _num("irq_cores_distributed")),
    ("  cores of other load (max)", _num("other_load_cores")),
    ("  worker RSS MB/session", _check("rss_per_session_mb", ".3f")),
    ("  errors (both setups)", _num("errors", "d")),
)


def print_table(results: Sequence[dict[str, Any]]) -> None:
    """One column per load, ``WIDTH`` characters at most (more loads: further blocks)."""
    if not results:
        return
    first = results[0]
    print(
        f"\nsweep: {first['seconds']:g} s per setup and load (after {first['warmup_s']:g} s "
        f"warm-up), {first['event_loop']}, {first['cpu_count']} CPUs\n"
        f"{first['redis']}; PASS/MISS: issue 9's target at that load (value<=target)"
    )
    if "repeats" in first:
        print(
            f"each load ran {len(first['repeats'])} times; each column is the run with the "
            "median (worker+ingress+Redis)/client"
        )
    per_block = max(1, (WIDTH - _LABEL) // _CELL)
    for start in range(0, len(results), per_block):
        block = results[start : start + per_block]
        header = "".join(f"{str(r['sessions']) + ' sessions':>{_CELL}}" for r in block)
        print(f"{'':<{_LABEL}}{header}")
        for label, cell in ROWS:
            if cell is None:
                print(label)
                continue
            print(f"{label:<{_LABEL}}" + "".join(f"{cell(r):>{_CELL}}" for r in block))
