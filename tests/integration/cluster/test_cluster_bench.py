"""``make bench`` against a Redis Cluster: the runtime benchmark's quick path runs end to end on
the cluster (queue on its own Redis) and reports the Redis CPU of every server."""

from __future__ import annotations

import pytest

from bench import runtime

from .conftest import ClusterSetup

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]


async def test_the_bench_reports_redis_cpu_per_cluster_node(
    shared_cluster: ClusterSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", shared_cluster.url)
    monkeypatch.setenv("VOICEGRID_QUEUE_URL", shared_cluster.queue_url)
    result = await runtime.run_async(sessions=3, seconds=2.0, warmup_s=1.0)
    dist = result["distributed"]
    assert dist["errors"] == {} and dist["frames_out_per_s"] > 0
    servers = dist["redis_cpu_per_server_per_session_s"]
    primaries = [name for name in servers if name.startswith("primary ")]
    assert len(primaries) == 3 and "queue" in servers
    assert all(cpu >= 0 for cpu in servers.values())
    assert dist["redis_cpu_per_session_s"] == pytest.approx(sum(servers.values()))
    runtime.print_table(result)
