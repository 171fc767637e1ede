"""The runtime benchmark at several loads: one run per load, one table with a column per load.

Each load is a whole :func:`bench.runtime.run` (its own simulator, worker and Redis namespace,
the in-process baseline and then the distributed setup), one after the other; its ``summary``
and ``targets`` feed the table printed here and the plot (:mod:`bench.plot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import runtime

__all__ = ["DEFAULT_LOADS", "parse_loads", "print_table", "run"]

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


def run(loads: Sequence[int], *, seconds: float, warmup_s: float) -> list[dict[str, Any]]:
    """Run the runtime benchmark at each load (ascending); print each load's own table, then the
    sweep table. Returns one result per load."""
    results: list[dict[str, Any]] = []
    for index, sessions in enumerate(sorted(loads), 1):
        print(f"\n=== load {index}/{len(loads)}: {sessions} sessions", flush=True)
        results.append(runtime.run(sessions=sessions, seconds=seconds, warmup_s=warmup_s))
    print_table(results)
    return results


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
