"""``make bench`` against a Redis Cluster: the runtime benchmark's quick path runs end to end on
the cluster (queue on its own Redis) and reports the Redis CPU of every server; ``--shards``
compares one Redis with a cluster it starts itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import __main__ as cli
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


def test_the_shards_comparison_runs_one_redis_and_a_cluster_like_for_like(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m bench --shards 3 --replicas 1``: its own servers (a Redis with a replica, a
    3-primary cluster with a replica each, the queue Redis), the same load on both, the ratio of
    each primary's Redis CPU to the single Redis's; every server is stopped afterwards."""
    out = tmp_path / "shards.json"
    argv = ["--shards", "3", "--replicas", "1", "--sessions", "3", "--seconds", "1.5"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())["shards"]
    assert result["shards"] == 3 and result["replicas"] == 1
    for side in ("single", "cluster"):
        assert result[side]["errors"] == {}, side
        assert result[side]["frames_out_per_s"] > 0, side
    summary = result["summary"]
    assert summary["single_redis_ms"] > 0
    assert len(summary["primaries_ms"]) == 3 and len(summary["replicas_ms"]) == 3
    assert len(summary["queue_ms"]) == 1
    assert all(r is not None and r > 0 for r in summary["primary_to_single"])
    assert summary["ideal"] == pytest.approx(1 / 3)
    table = capsys.readouterr().out
    assert "each primary / the single Redis" in table and "ideal 0.33" in table
    # nothing left running: no redis-server of this run's temp dir
    assert (
        "voicegrid-shards-"
        not in subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True, check=True
        ).stdout
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "1"], "--shards 1 --replicas 0: expected at least 2 shards"),
        (["--replicas", "1"], "--replicas goes with --shards"),
        (["--shards", "3", "--sweep", "2,4"], "--shards runs one load"),
        (["--shards", "3", "--repeat", "2"], "--shards runs one load"),
    ],
)
def test_the_shards_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
