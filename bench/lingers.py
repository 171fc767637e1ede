"""The linger's trade-off, measured: CPU against added latency at one load, for several lingers.

``python -m bench --lingers 2,5,10 [--sessions N] [--seconds S] [--repeat R]`` starts one
simulator (and uses ``REDIS_URL``, or an embedded Redis, as the runtime benchmark does); then in
each of ``R`` rounds it runs the in-process baseline once and the distributed setup once per
linger, the worker and the ingress both at that ``VOICEGRID_BATCH_LINGER_MS``. The lingers'
order rotates from round to round, so none always runs right after the baseline. Every
distributed run is compared with its own round's baseline (``bench.runtime``'s summary and issue
9's verdicts), and the table shows, per linger, the median over the rounds of each number: this
host's speed drifts by 20-30 % within minutes, and alternating is what makes the lingers
comparable.

It also splits each cost in two with a least-squares fit over every run of every nonzero linger,
``cost = per_frame + per_round / linger``: below saturation a pump goes round once per linger,
so the ``per_round / linger`` part is what batching can still take away, and ``per_frame`` (the
fit at an endless linger) is what each frame costs however it is batched. A target below the
``per_frame`` floor cannot be met by any linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from protocol import RuntimeFailure
from voicegrid.runloop import run_main

from . import runtime

__all__ = [
    "DEFAULT_SESSIONS",
    "fit_rounds",
    "parse_lingers",
    "print_table",
    "run",
    "run_async",
    "summarize",
]

DEFAULT_SESSIONS = 50
#: What ``VOICEGRID_BATCH_LINGER_MS`` accepts (``redisio.settings.batch_linger_s``).
MAX_LINGER_MS = 50.0
#: The numbers compared per linger: (summary key, row label, format).
ROWS: tuple[tuple[str, str, str], ...] = (
    ("worker_ms", "worker CPU ms/session-s", ".2f"),
    ("ingress_ms", "ingress CPU ms/session-s", ".2f"),
    ("redis_ms", "Redis CPU ms/session-s", ".2f"),
    ("distributed_ms", "worker + ingress + Redis", ".2f"),
    ("in_process_client_ms", "in-process client (its round)", ".2f"),
    ("distributed_to_client", "(worker+ingress+Redis)/client", ".2f"),
    ("worker_to_client", "worker / in-process client", ".2f"),
    ("redis_cores", "Redis cores", ".3f"),
    ("added_in_p50_ms", "caller->provider p50 ms", ".1f"),
    ("added_in_p99_ms", "caller->provider p99 ms", ".1f"),
    ("added_out_p50_ms", "provider->caller p50 ms", ".1f"),
    ("added_out_p99_ms", "provider->caller p99 ms", ".1f"),
    ("cores_busy_distributed", "machine cores busy", ".2f"),
)

#: The costs split into a per-frame and a per-round part (:func:`fit_rounds`).
FIT_KEYS: tuple[str, ...] = (
    "worker_ms",
    "ingress_ms",
    "redis_ms",
    "distributed_ms",
    "distributed_to_client",
    "worker_to_client",
)


def parse_lingers(text: str) -> list[float]:
    """``"2,5,10"`` -> ``[2.0, 5.0, 10.0]`` (milliseconds); raises ``ValueError`` naming a bad
    entry."""
    lingers: list[float] = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number of milliseconds") from None
        if not 0 <= value <= MAX_LINGER_MS:
            raise ValueError(f"{value:g} ms: expected 0-{MAX_LINGER_MS:g} ms")
        lingers.append(value)
    if len(set(lingers)) != len(lingers):
        raise ValueError(f"{text!r}: a linger appears twice")
    if len(lingers) < 2:
        raise ValueError(f"{text!r}: name at least two lingers to compare")
    return lingers


@contextlib.contextmanager
def _linger_env(ms: float) -> Iterator[None]:
    """``VOICEGRID_BATCH_LINGER_MS`` for the worker started inside (it inherits the environment)
    and for this process's ingress hub (created per namespace, so per run)."""
    name = "VOICEGRID_BATCH_LINGER_MS"
    before = os.environ.get(name)
    os.environ[name] = f"{ms:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median over ``runs`` (one linger's rounds, each a compared result) of every number
    in :data:`ROWS`; a number some round lacks is the median of the others (None if none)."""
    medians: dict[str, Any] = {}
    for key, _, _ in ROWS:
        values = [run["summary"][key] for run in runs if run["summary"][key] is not None]
        medians[key] = statistics.median(values) if values else None
    medians["errors"] = sum(run["summary"]["errors"] for run in runs)
    return medians


def fit_rounds(per_linger: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Least-squares ``value = per_frame + per_round / linger`` for each of :data:`FIT_KEYS`
    over every round of every nonzero linger (``per_linger`` as :func:`run_async` returns it).

    Per key: ``per_frame`` (the fit's value at an endless linger), ``per_round`` (in the
    value's unit times milliseconds: divided by a linger, the part of the cost that comes from
    going round) and ``points``. None when fewer than two distinct nonzero lingers have data: a
    zero linger has no rounds-per-linger to fit (its rounds follow the arrivals instead).
    """
    fit: dict[str, Any] = {}
    for key in FIT_KEYS:
        xs: list[float] = []
        ys: list[float] = []
        for entry in per_linger:
            if entry["linger_ms"] <= 0:
                continue
            for summary in entry["rounds"]:
                if summary.get(key) is not None:
                    xs.append(1.0 / entry["linger_ms"])
                    ys.append(summary[key])
        if len(set(xs)) < 2:
            return None
        slope, intercept = statistics.linear_regression(xs, ys)
        fit[key] = {"per_frame": intercept, "per_round": slope, "points": len(xs)}
    return fit


async def run_async(
    *,
    lingers: Sequence[float],
    sessions: int = DEFAULT_SESSIONS,
    seconds: float = 10.0,
    warmup_s: float = 2.0,
    repeat: int = 1,
) -> dict[str, Any]:
    """Every linger at one load, ``repeat`` rounds; see the module docstring."""
    if sessions < 1 or seconds <= 0 or repeat < 1 or len(lingers) < 2:
        raise RuntimeFailure(
            f"sessions={sessions}, seconds={seconds}, repeat={repeat}, lingers={list(lingers)}: "
            "expected sessions >= 1, seconds > 0, repeat >= 1 and at least two lingers"
        )
    targets = runtime.Targets.at(sessions)
    runs: dict[float, list[dict[str, Any]]] = {ms: [] for ms in lingers}
    # each setup: start the worker, connect, warm up, measure, disconnect (generous: a bound,
    # not an estimate)
    per_round = (1 + len(lingers)) * (warmup_s + seconds + 30 + 0.5 * sessions)
    budget = 90.0 + repeat * per_round
    with tempfile.TemporaryDirectory(prefix="voicegrid-lingers-") as tmp:
        logs = Path(tmp)
        async with asyncio.timeout(budget), contextlib.AsyncExitStack() as stack:
            redis_url, redis_desc = await stack.enter_async_context(runtime.bench_redis(logs))
            sim, sim_url = await runtime.start_simulator(stack, logs)
            driver_cpu = await runtime.callers_cpu(sessions, seconds)
            for round_ in range(repeat):
                print(f"\n=== round {round_ + 1}/{repeat}: in-process baseline", flush=True)
                baseline = await runtime.baseline(
                    sim_url, sim.pid, sessions, seconds, warmup_s, driver_cpu
                )
                shift = round_ % len(lingers)
                for ms in [*lingers[shift:], *lingers[:shift]]:
                    print(f"=== round {round_ + 1}/{repeat}: linger {ms:g} ms", flush=True)
                    with _linger_env(ms):
                        distributed = await runtime.distributed(
                            redis_url,
                            sim_url,
                            sim.pid,
                            sessions,
                            seconds,
                            warmup_s,
                            logs,
                            driver_cpu,
                        )
                    result = {
                        "sessions": sessions,
                        "baseline": baseline,
                        "distributed": distributed,
                    }
                    runtime.compare(result, targets)
                    runs[ms].append(result)
    per_linger = [
        {
            "linger_ms": ms,
            "median": summarize(runs[ms]),
            "rounds": [result["summary"] for result in runs[ms]],
            "targets": [result["targets"] for result in runs[ms]],
        }
        for ms in lingers
    ]
    return {
        "sessions": sessions,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "repeat": repeat,
        "redis": redis_desc,
        "cpu_count": os.cpu_count(),
        "lingers_ms": list(lingers),
        "per_linger": per_linger,
        "fit": fit_rounds(per_linger),
    }


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    """One column per linger: the medians over the rounds."""
    per = result["per_linger"]
    rounds = result["repeat"]
    print(
        f"\nlingers: {result['sessions']} sessions x {result['seconds']:g} s per run, "
        f"{rounds} round(s), {result['redis']}, {result['cpu_count']} CPUs"
    )
    print("each cell: the median over the rounds; ratios against the same round's in-process run")
    head = "".join(f"{'linger ' + format(p['linger_ms'], 'g') + ' ms':>14}" for p in per)
    print(f"  {'':32}{head}")
    for key, label, spec in ROWS:
        cells = "".join(f"{_cell(p['median'][key], spec):>14}" for p in per)
        print(f"  {label:32}{cells}")
    print(f"  {'errors (all rounds)':32}" + "".join(f"{p['median']['errors']:>14}" for p in per))
    fit = result.get("fit")
    if fit is None:
        return
    labels = {key: label for key, label, _ in ROWS}
    print("\nthe costs split by a fit over every run: cost = per frame + per round / linger")
    print(
        "'per frame' is the cost at an endless linger (no target below it can be met by"
        " batching);\n'per round at L' is what going round every L ms adds"
    )
    nonzero = [p["linger_ms"] for p in per if p["linger_ms"] > 0]
    head = "".join(f"{'per round at ' + format(ms, 'g') + ' ms':>19}" for ms in nonzero)
    print(f"  {'':32}{'per frame':>12}{head}")
    for key in FIT_KEYS:
        part = fit[key]
        cells = "".join(f"{part['per_round'] / ms:>19.2f}" for ms in nonzero)
        print(f"  {labels[key]:32}{part['per_frame']:>12.2f}{cells}")


def run(**options: Any) -> dict[str, Any]:
    """:func:`run_async` in a fresh event loop (uvloop when installed); prints the table."""
    result = run_main(run_async(**options))
    print_table(result)
    return result
