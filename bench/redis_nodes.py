"""The Redis side of the runtime benchmark on either layout (``docs/streams.md``): one Redis, or
session streams on a Redis Cluster (``REDIS_URL=redis+cluster://...``) with the queue on
``VOICEGRID_QUEUE_URL``. CPU and command statistics are read per server (``INFO cpu``,
``INFO commandstats``), so a cluster run shows what each primary, each replica and the queue
Redis spent: the figure that says whether adding shards divides the load.
"""

from __future__ import annotations

import os
from typing import Any

from redisio.cluster import RedisStores, open_stores
from redisio.settings import CommonSettings

__all__ = ["cleanup", "open_bench_stores", "server_commands", "server_cpu"]


def open_bench_stores(
    redis_url: str, namespace: str, *, queue_url: str | None = None
) -> RedisStores:
    """The clients a worker with this environment would open (queue URL: ``queue_url``, else
    ``VOICEGRID_QUEUE_URL``)."""
    env = {**os.environ, "REDIS_URL": redis_url, "VOICEGRID_NAMESPACE": namespace}
    if queue_url is not None:
        env["VOICEGRID_QUEUE_URL"] = queue_url
    return open_stores(CommonSettings(**CommonSettings.redis_from_env(env)))


async def _per_server(stores: RedisStores, section: str) -> dict[str, dict[str, Any]]:
    """``INFO <section>`` of every server: ``<role> <host:port>`` (cluster nodes, plus
    ``queue``), or ``redis`` for a single Redis."""
    if stores.cluster is None:
        return {"redis": await stores.sessions.info(section)}
    out: dict[str, dict[str, Any]] = {}
    await stores.cluster.initialize()
    for node in stores.cluster.get_nodes():
        info = await stores.cluster.info(section, target_nodes=node)
        out[f"{node.server_type or 'node'} {node.name}"] = info
    out["queue"] = await stores.queue.info(section)
    return out


async def server_cpu(stores: RedisStores) -> dict[str, float]:
    """CPU seconds (user + system) each Redis server has used."""
    return {
        name: float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        for name, info in (await _per_server(stores, "cpu")).items()
    }


async def server_commands(stores: RedisStores) -> dict[str, tuple[int, int]]:
    """``INFO commandstats`` summed over the primaries and the queue Redis (replicas replay
    their primary's writes): command -> (calls, microseconds)."""
    total: dict[str, tuple[int, int]] = {}
    servers = await _per_server(stores, "commandstats")
    for server, info in servers.items():
        if server.startswith("replica "):
            continue
        for name, stat in info.items():
            if isinstance(stat, dict):
                calls, usec = total.get(name.removeprefix("cmdstat_"), (0, 0))
                total[name.removeprefix("cmdstat_")] = (
                    calls + int(stat["calls"]),
                    usec + int(stat["usec"]),
                )
    return total


async def cleanup(stores: RedisStores, namespace: str) -> int:
    """Delete the run's keys (session keys on every primary, arq's and the queue's keys)."""
    deleted = 0
    clients: list[Any] = [stores.queue]
    if stores.cluster is not None:
        clients.append(stores.cluster)
    for client in clients:
        for pattern in (f"{namespace}:*", f"arq:*:{namespace}:*"):
            async for key in client.scan_iter(match=pattern, count=1000):
                deleted += int(await client.delete(key))
    return deleted
