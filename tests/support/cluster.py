"""``bench.local_redis``'s throw-away Redis servers (a cluster, single nodes, replicas and
Sentinels on loopback ports) with every wait scaled to the test suite
(``VOICEGRID_TEST_TIME_SCALE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import local_redis
from bench.local_redis import cluster_port, have_redis_server, redis_server_command

from .timing import TIME_SCALE

__all__ = [
    "LocalCluster",
    "RedisServer",
    "ReplicatedRedis",
    "cluster_port",
    "have_redis_server",
    "redis_server_command",
]


class RedisServer(local_redis.RedisServer):
    """One ``redis-server`` on 127.0.0.1, waits scaled to the test suite."""

    def __init__(self, directory: Path, port: int, *extra: str) -> None:
        super().__init__(directory, port, *extra, scale=TIME_SCALE)


class LocalCluster(local_redis.LocalCluster):
    """A local Redis Cluster, waits scaled to the test suite."""

    def __init__(self, directory: Path, **options: Any) -> None:
        super().__init__(directory, scale=TIME_SCALE, **options)


class ReplicatedRedis(local_redis.ReplicatedRedis):
    """A Redis with replicas and Sentinels, waits scaled to the test suite."""

    def __init__(self, directory: Path, **options: Any) -> None:
        super().__init__(directory, scale=TIME_SCALE, **options)
