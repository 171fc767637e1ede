"""Cluster integration fixtures: a real local Redis Cluster (3 primaries, 3 replicas, loopback
ports, a temp dir) plus a single-node queue Redis, started by this suite and stopped after it;
real ``voicegrid worker`` processes with ``REDIS_URL=redis+cluster://...`` and
``VOICEGRID_QUEUE_URL``; the OpenAI simulator as the provider.

The suite needs ``redis-server`` and ``redis-cli`` on the PATH (CI's ``.ci/run`` has them): in CI
their absence fails the run, elsewhere it skips these tests with that reason. They do not use
``REDIS_URL`` (they bring their own Redis), so they run where the other integration tests skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingress import RedisRealtimeClient
from protocol.keys import Keys
from providers.simulator.base import BaseSimulator
from redisio.cluster import open_cluster

from ...support.cluster import LocalCluster, RedisServer, cluster_port, have_redis_server
from ...support.timing import scaled
from ..runtime.conftest import Caller, Timeline, WorkerProcess, worker_env

__all__ = ["ClusterSetup", "start_cluster_call"]

BUCKETS = 24


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if have_redis_server():
        return
    mine = [item for item in items if "cluster" in item.keywords]
    if mine and _in_ci():
        raise pytest.UsageError(
            "CI is set but redis-server/redis-cli are not on the PATH: the Redis Cluster tests "
            "(tests/integration/cluster) must run in CI"
        )
    for item in mine:
        item.add_marker(pytest.mark.skip(reason="needs redis-server and redis-cli on the PATH"))


class ClusterSetup:
    """A running cluster, its queue Redis, and the URLs the processes get."""

    def __init__(self, cluster: LocalCluster, queue: RedisServer) -> None:
        self.cluster = cluster
        self.queue = queue

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def queue_url(self) -> str:
        return self.queue.url

    def stop(self) -> None:
        self.cluster.stop()
        self.queue.kill()


def _start(directory: Path) -> ClusterSetup:
    directory.mkdir(parents=True, exist_ok=True)
    queue = RedisServer(directory, cluster_port())
    queue.wait_serving()
    try:
        cluster = LocalCluster(directory, node_timeout_ms=1000).start()
    except BaseException:
        queue.kill()
        raise
    return ClusterSetup(cluster, queue)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """One cluster for the tests that leave it healthy (each test has its own namespace)."""
    setup = _start(tmp_path_factory.mktemp("redis-cluster"))
    yield setup
    setup.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    """A cluster of its own, for a test that kills one of its nodes."""
    setup = _start(tmp_path / "redis-cluster")
    yield setup
    setup.stop()


@pytest.fixture
def namespace() -> str:
    return f"vgcl-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_workers(namespace: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str, setup: ClusterSetup, sim_url: str, **env: str) -> WorkerProcess:
        env = {"VOICEGRID_QUEUE_URL": setup.queue_url, **env}
        worker = WorkerProcess(name, worker_env(setup.url, namespace, sim_url, **env), tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def make_cluster_client(namespace: str) -> Callable[..., RedisRealtimeClient]:
    def make(setup: ClusterSetup, session_id: str | None = None) -> RedisRealtimeClient:
        return RedisRealtimeClient(
            setup.url,
            provider="openai",
            model="gpt-realtime",
            session_id=session_id,
            namespace=namespace,
            queue_url=setup.queue_url,
            connect_timeout_s=scaled(20),
        )

    return make


def session_in_bucket(bucket: int, buckets: int = BUCKETS) -> str:
    """A fresh session id whose keys land in ``bucket``."""
    keys = Keys("x", buckets)
    while True:
        sid = uuid.uuid4().hex
        if keys.bucket_of(sid) == bucket:
            return sid


async def record_field(setup: ClusterSetup, namespace: str, session_id: str, field: str) -> str:
    """A field of a session's record, read from the cluster."""
    cluster = open_cluster(setup.url)
    try:
        value = await cluster.hget(Keys(namespace, BUCKETS).session(session_id).state, field)
    finally:
        await cluster.aclose()
    return value.decode() if value else ""


async def start_cluster_call(
    setup: ClusterSetup,
    sim: BaseSimulator,
    start_workers: Any,
    make_client: Any,
    namespace: str,
    config: Any,
    *,
    session_id: str | None = None,
) -> tuple[RedisRealtimeClient, WorkerProcess, Timeline, Caller, list[WorkerProcess]]:
    """Two workers on the cluster, a session and a caller talking; returns once the model
    answered the first turn: ``(client, owner, timeline, call, pair)``."""
    pair = [start_workers("a", setup, sim.url), start_workers("b", setup, sim.url)]
    await asyncio.gather(*(w.wait_ready() for w in pair))
    client = make_client(setup, session_id)
    timeline = Timeline(client)
    await client.connect(config)
    assert client.session_id is not None
    owner_id = await record_field(setup, namespace, client.session_id, "owner")
    owner = next(w for w in pair if w.worker_id == owner_id)
    call = Caller(client)
    call.start()
    await timeline.wait("audio", within=15)
    return client, owner, timeline, call, pair
