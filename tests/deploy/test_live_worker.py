"""A real ``voicegrid worker`` process, run the way the worker Deployment runs it.

The manifests' probe paths answer on ``VOICEGRID_METRICS_PORT``, the live ``/metrics`` passes
``promtool check metrics`` and shows only names from ``redisio.metrics``, and SIGTERM ends the
process (exit 0) well within the Deployment's ``terminationGracePeriodSeconds``. Needs a real
Redis (``REDIS_URL``; CI provides one), hence the integration marker.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redisio.metrics import METRIC_NAMES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: Scales every wait in this file (slow CI machines).
TIME_SCALE = float(os.environ.get("VOICEGRID_TEST_TIME_SCALE", "1"))
STARTUP_TIMEOUT_S = 20.0 * TIME_SCALE

Find = Callable[..., list[dict[str, Any]]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class LiveWorker:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def get(self, path: str) -> tuple[int, str]:
        return _get(self.port, path)


@pytest.fixture
def live_worker() -> Iterator[LiveWorker]:
    url = os.environ["REDIS_URL"]
    namespace = f"deploytest-{uuid.uuid4().hex[:8]}"
    port = _free_port()
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
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"voicegrid worker exited with {process.returncode}"
            try:
                if worker.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the worker's /healthz never answered 200"
            time.sleep(0.1)
        yield worker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
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
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    names = set(re.findall(r"^([a-zA-Z_:][\w:]*)(?:\{| )", text, re.MULTILINE))
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
    code = live_worker.process.wait(timeout=grace * TIME_SCALE)
    elapsed = time.monotonic() - started
    assert code == 0, f"exit code {code} after SIGTERM"
    assert elapsed < grace, f"took {elapsed:.1f}s, the grace period is {grace}s"
