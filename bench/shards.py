"""One Redis against a Redis Cluster, in one run: does adding primaries divide the Redis load?

``python -m bench --shards 3 [--replicas R] [--sessions N] [--seconds S]`` starts its own servers
on loopback ports in a temp dir (``bench.local_redis``; ``redis-server`` and ``redis-cli`` on the
PATH): one Redis (with ``R`` replicas of its own), and a cluster of ``--shards`` primaries with
``R`` replicas each plus the single-node queue Redis the cluster layout needs. Then it runs the
runtime benchmark's distributed setup (``bench.runtime.distributed``: the same callers, one
worker, the same simulator) once against each, and compares the Redis CPU per session-second of
every server. Like for like: both sides have the same number of replicas per primary, because a
primary also pays for feeding its replicas.

The ratio that answers the question is each cluster primary's CPU over the single Redis's, at
the same load; ``1 / shards`` would be perfect division. What stays above it is the per-round
cost: every process's pumps go round up to ``1 / linger`` times a second per node they have
traffic on, whatever share of the sessions that node holds (docs/operations.md, "Capacity per
shard").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from protocol import RuntimeFailure
from voicegrid.runloop import run_main

from . import runtime
from .local_redis import (
    LocalCluster,
    RedisServer,
    ReplicatedRedis,
    cluster_port,
    have_redis_server,
)

__all__ = ["print_table", "run", "run_async"]

DEFAULT_SESSIONS = 100


def _per_role(cpu: dict[str, float]) -> dict[str, list[float]]:
    """Per-server CPU (ms per session-second) grouped: primaries, replicas, queue."""
    roles: dict[str, list[float]] = {"primary": [], "replica": [], "queue": []}
    for name, value in sorted(cpu.items()):
        role = name.split(" ", 1)[0]
        roles.setdefault(role, []).append(value * 1000)
    return roles


async def run_async(
    *,
    sessions: int = DEFAULT_SESSIONS,
    seconds: float = 10.0,
    warmup_s: float = 2.0,
    shards: int = 3,
    replicas: int = 0,
) -> dict[str, Any]:
    """Both layouts at one load; see the module docstring."""
    if not have_redis_server():
        raise RuntimeFailure("--shards needs redis-server and redis-cli on the PATH")
    if shards < 2 or replicas < 0 or sessions < 1 or seconds <= 0:
        raise RuntimeFailure(
            f"shards={shards}, replicas={replicas}, sessions={sessions}, seconds={seconds}: "
            "expected at least 2 shards, 0 or more replicas, sessions >= 1, seconds > 0"
        )
    result: dict[str, Any] = {
        "sessions": sessions,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "shards": shards,
        "replicas": replicas,
        "cpu_count": os.cpu_count(),
    }
    budget = 180.0 + 3 * (warmup_s + seconds) + 0.5 * sessions
    with tempfile.TemporaryDirectory(prefix="voicegrid-shards-") as tmp:
        logs = Path(tmp)
        servers = logs / "redis"
        servers.mkdir()
        single = ReplicatedRedis(servers, replicas=replicas)
        queue = RedisServer(servers, cluster_port())
        cluster = LocalCluster(servers, primaries=shards, replicas=replicas)
        try:
            await asyncio.to_thread(single.start)
            queue.wait_serving()
            await asyncio.to_thread(cluster.start)
            async with asyncio.timeout(budget), contextlib.AsyncExitStack() as stack:
                sim, sim_url = await runtime.start_simulator(stack, logs)
                driver_cpu = await runtime.callers_cpu(sessions, seconds)
                result["single"] = await runtime.distributed(
                    single.url, sim_url, sim.pid, sessions, seconds, warmup_s, logs, driver_cpu
                )
                result["cluster"] = await runtime.distributed(
                    cluster.url,
                    sim_url,
                    sim.pid,
                    sessions,
                    seconds,
                    warmup_s,
                    logs,
                    driver_cpu,
                    queue_url=queue.url,
                )
        finally:
            cluster.stop()
            queue.kill()
            single.stop()
            shutil.rmtree(servers, ignore_errors=True)
    single_roles = _per_role(result["single"]["redis_cpu_per_server_per_session_s"])
    # a single Redis reports as "redis" (its replicas are not sampled: see single_replicas)
    single_ms = single_roles.get("redis", [0.0])[0]
    cluster_roles = _per_role(result["cluster"]["redis_cpu_per_server_per_session_s"])
    primaries = cluster_roles["primary"]
    result["summary"] = {
        "single_redis_ms": single_ms,
        "primaries_ms": primaries,
        "replicas_ms": cluster_roles["replica"],
        "queue_ms": cluster_roles["queue"],
        "primary_to_single": [p / single_ms if single_ms else None for p in primaries],
        "mean_primary_to_single": (sum(primaries) / len(primaries) / single_ms)
        if single_ms and primaries
        else None,
        "primaries_total_to_single": sum(primaries) / single_ms if single_ms else None,
        "ideal": 1 / shards,
    }
    return result


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    """The comparison as a table (CPU in ms per session-second)."""
    s, c, summary = result["single"], result["cluster"], result["summary"]
    print(
        f"\nsharding: {result['sessions']} sessions x {result['seconds']:g} s, one Redis vs a "
        f"cluster of {result['shards']} primaries, {result['replicas']} replica(s) per primary "
        f"on both sides, {result['cpu_count']} CPUs"
    )
    rows = [
        ("Redis CPU ms/session-s, per primary", _fmt(summary["single_redis_ms"]), ""),
        (
            "  cluster primaries",
            "",
            " / ".join(_fmt(v) for v in summary["primaries_ms"]),
        ),
        (
            "  each primary / the single Redis",
            "",
            " / ".join(_fmt(v) for v in summary["primary_to_single"])
            + f"  (mean {_fmt(summary['mean_primary_to_single'])}, ideal "
            f"{summary['ideal']:.2f})",
        ),
        (
            "  all primaries / the single Redis",
            "",
            _fmt(summary["primaries_total_to_single"]),
        ),
        ("  cluster replicas", "", " / ".join(_fmt(v) for v in summary["replicas_ms"]) or "-"),
        ("  queue Redis", "", " / ".join(_fmt(v) for v in summary["queue_ms"])),
        (
            "worker CPU ms/session-s",
            _fmt(s["worker_cpu_per_session_s"] * 1000),
            _fmt(c["worker_cpu_per_session_s"] * 1000),
        ),
        (
            "ingress CPU ms/session-s",
            _fmt(s["ingress_cpu_per_session_s"] * 1000),
            _fmt(c["ingress_cpu_per_session_s"] * 1000),
        ),
        (
            "added p50/p99 caller->provider ms",
            f"{_fmt(s['added_in_ms']['p50'], '.1f')}/{_fmt(s['added_in_ms']['p99'], '.1f')}",
            f"{_fmt(c['added_in_ms']['p50'], '.1f')}/{_fmt(c['added_in_ms']['p99'], '.1f')}",
        ),
        (
            "added p50/p99 provider->caller ms",
            f"{_fmt(s['added_out_ms']['p50'], '.1f')}/{_fmt(s['added_out_ms']['p99'], '.1f')}",
            f"{_fmt(c['added_out_ms']['p50'], '.1f')}/{_fmt(c['added_out_ms']['p99'], '.1f')}",
        ),
        (
            "model audio frames received /s",
            _fmt(s["frames_out_per_s"], ".0f"),
            _fmt(c["frames_out_per_s"], ".0f"),
        ),
        (
            "machine cores busy",
            _fmt(s["machine"]["cores_busy"]),
            _fmt(c["machine"]["cores_busy"]),
        ),
        ("errors", str(len(s["errors"])), str(len(c["errors"]))),
    ]
    print(f"  {'':38}{'one Redis':>12}  cluster")
    for label, one, many in rows:
        print(f"  {label:38}{one:>12}  {many}")


def run(**options: Any) -> dict[str, Any]:
    """:func:`run_async` in a fresh event loop (uvloop when installed); prints the table."""
    result = run_main(run_async(**options))
    print_table(result)
    return result
