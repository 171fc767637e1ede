"""The sweep's plot: CPU per session-second and added p99 against sessions, both setups.

Left: CPU ms per session-second of the in-process client, the worker, the ingress, Redis, the
simulator (solid: during the distributed run, dashed: during the in-process run) and the
distributed total (worker + ingress + Redis), with that total's target (the allowed multiple of
the in-process client at each load). Right: the added p50 / p99 each way against the issue's
p99 targets. Log scales: the numbers span two orders of magnitude between 20 and 200 sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write the PNG of ``results`` (one runtime result per load) to ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    ordered = sorted(results, key=lambda r: int(r["sessions"]))
    loads = [int(r["sessions"]) for r in ordered]

    def series(key: str) -> list[float]:
        return [
            float("nan") if r["summary"][key] is None else float(r["summary"][key]) for r in ordered
        ]

    def target(key: str) -> tuple[list[int], list[float]]:
        points = [
            (int(r["sessions"]), float(r["targets"][key]["target"]))
            for r in ordered
            if r["targets"][key]["target"] is not None
        ]
        return [p[0] for p in points], [p[1] for p in points]

    first = ordered[0]
    other = max(float(r["summary"]["other_load_cores"]) for r in ordered)
    fig, (cpu, lat) = plt.subplots(1, 2, figsize=(13, 6.4), dpi=110, layout="constrained")
    runs = f", median of {len(first['repeats'])} runs" if "repeats" in first else ""
    fig.suptitle(
        f"voicegrid runtime: cost as load grows ({first['seconds']:g} s per setup and load{runs})"
        f"\n{first['cpu_count']} CPUs, {first['redis']}; other load on the machine up to "
        f"{other:.2f} cores",
        fontsize=11,
    )

    client = series("in_process_client_ms")
    cpu.plot(loads, client, "o-", color="black", lw=2, label="in-process client")
    cpu.plot(
        loads,
        series("distributed_ms"),
        "s-",
        color="tab:red",
        lw=2.5,
        label="distributed: worker + ingress + Redis",
    )
    cpu.plot(loads, series("worker_ms"), "o-", color="tab:blue", label="worker")
    cpu.plot(loads, series("ingress_ms"), "o-", color="tab:green", label="ingress")
    cpu.plot(loads, series("redis_ms"), "o-", color="tab:purple", label="Redis")
    cpu.plot(
        loads,
        series("simulator_distributed_ms"),
        "^-",
        color="tab:orange",
        label="simulator (distributed run)",
    )
    cpu.plot(
        loads,
        series("simulator_in_process_ms"),
        "v--",
        color="tab:orange",
        alpha=0.7,
        label="simulator (in-process run)",
    )
    allowed_at, allowed = [], []
    for r, value in zip(ordered, client, strict=True):
        allowed_at.append(int(r["sessions"]))
        allowed.append(value * float(r["targets"]["distributed_cpu_ratio"]["target"]))
    cpu.plot(
        allowed_at,
        allowed,
        ":",
        color="tab:red",
        lw=1.5,
        label="target for the distributed total:\n2x client below 100 sessions, 1.5x from 100",
    )
    cpu.set_title("CPU per session-second (lower is better)", fontsize=10)
    cpu.set_ylabel("CPU ms per session-second")

    for key, color, label in (
        ("added_in", "tab:blue", "caller->provider"),
        ("added_out", "tab:green", "provider->caller"),
    ):
        lat.plot(loads, series(f"{key}_p99_ms"), "o-", color=color, lw=2, label=f"{label} p99")
        lat.plot(
            loads, series(f"{key}_p50_ms"), "o--", color=color, alpha=0.6, label=f"{label} p50"
        )
    at, limit = target("p99_added_in_ms")
    if at:
        lat.hlines(
            limit,
            [x / 1.12 for x in at],
            [x * 1.12 for x in at],
            color="tab:red",
            lw=3,
            label="p99 target, each way\n(set at 50, 100, 200)",
        )
    lat.set_title("Added latency of the distributed path (lower is better)", fontsize=10)
    lat.set_ylabel("ms")

    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    for axes in (cpu, lat):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(loads)
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_locator(NullLocator())
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("concurrent sessions")
        axes.margins(x=0.08)
        axes.grid(True, which="major", alpha=0.35)
        axes.grid(True, which="minor", alpha=0.12)
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
