"""A real ``voicegrid worker`` process, run the way the worker Deployment runs it.

The manifests' probe paths answer on ``VOICEGRID_METRICS_PORT``, the live ``/metrics`` passes
``promtool check metrics`` and shows only names from ``redisio.metrics``, and SIGTERM ends the
process (exit 0) well within the Deployment's ``terminationGracePeriodSeconds``. Needs a real
Redis (``REDIS_URL``; CI provides one), hence the integration marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redisio.metrics import METRIC_NAMES

from ..support.net import free_port, http_get, wait_until_serving
from ..support.prometheus import series_names
from ..support.timing import scaled

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
Find = Callable[..., list[dict[str, Any]]]


class LiveWorker:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.port, path)


@pytest.fixture
def live_worker() -> Iterator[LiveWorker]:
    url = os.environ["REDIS_URL"]
    namespace = f"deploytest-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": url,
        "VOICEGRID_NAMESPACE": namespace,
        "VOICEGRID_METRICS_PORT": str(port),
        "VOICEGRID_LOG_FORMAT": "json",
    }
    command = [str(Path(sys.executable).parent / "voicegrid"), "worker"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    worker = LiveWorker(process, port)
    try:
        wait_until_serving(port, alive=lambda: process.poll() is None, what="voicegrid worker")
        yield worker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=scaled(10))
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_probes_answer_where_the_manifest_asks(
    live_worker: LiveWorker, rendered: dict[str, list[dict[str, Any]]], find_objects: Find
) -> None:
    [deployment] = find_objects(rendered["prod"], "Deployment", "voicegrid-worker")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        status, body = live_worker.get(container[probe]["httpGet"]["path"])
        assert status == 200, f"{probe}: {status} {body}"


def test_live_metrics_pass_promtool(live_worker: LiveWorker, promtool: str) -> None:
    status, text = live_worker.get("/metrics")
    assert status == 200
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    names = series_names(text)
    assert "voicegrid_sessions_capacity" in names
    voicegrid = {n for n in names if n.startswith("voicegrid_")}
    assert voicegrid <= METRIC_NAMES, voicegrid - METRIC_NAMES


def test_sigterm_exits_within_the_grace_period(
    live_worker: LiveWorker, rendered: dict[str, list[dict[str, Any]]], find_objects: Find
) -> None:
    [deployment] = find_objects(rendered["prod"], "Deployment", "voicegrid-worker")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    live_worker.process.send_signal(signal.SIGTERM)
    code = live_worker.process.wait(timeout=scaled(grace))
    elapsed = time.monotonic() - started
    assert code == 0, f"exit code {code} after SIGTERM"
    # docs/operations.md (Draining and rolling deploys): exit 0 on SIGTERM within the grace period
    assert elapsed < scaled(grace), f"took {elapsed:.1f}s, the grace period is {grace}s"
