"""``voicegrid gateway`` as a real process, configured like the Kubernetes manifests (ports from the
environment, probes on the metrics port), against an embedded Redis: it serves the probes and
callers, and SIGTERM closes callers with 1012 and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingress.settings import GATEWAY_MAX_CONNECTIONS

from ...support.net import free_port, http_get, voicegrid_command, wait_until_serving
from ...support.timing import scaled

REPO = Path(__file__).resolve().parents[3]
TOKEN = "process-token-456"


async def test_the_gateway_process_serves_probes_and_drains_on_sigterm(
    embedded_redis_url: str,
) -> None:
    ws_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": embedded_redis_url,
        "VOICEGRID_GATEWAY_PORT": str(ws_port),
        "VOICEGRID_METRICS_PORT": str(metrics_port),
        "VOICEGRID_GATEWAY_TOKEN": TOKEN,
        "VOICEGRID_LOG_LEVEL": "DEBUG",
        "VOICEGRID_NAMESPACE": "vggwproc",
    }
    process = await asyncio.create_subprocess_exec(
        *voicegrid_command("gateway", "--host", "127.0.0.1"),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = asyncio.create_task(process.stderr.read())  # drained all along: DEBUG is chatty
    try:
        await asyncio.to_thread(
            wait_until_serving,
            metrics_port,
            alive=lambda: process.returncode is None,
            what="the gateway",
        )
        status, body = await asyncio.to_thread(http_get, metrics_port, "/readyz")
        assert (status, body) == (200, f"ready: 0/{GATEWAY_MAX_CONNECTIONS} sessions\n")
        status, body = await asyncio.to_thread(http_get, metrics_port, "/metrics")
        assert status == 200 and "voicegrid_gateway_connections" in body

        url = f"ws://127.0.0.1:{ws_port}/v1/sessions"
        ws = await connect(
            url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=scaled(10)
        )
        process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(10))
        assert (ws.close_code, ws.close_reason) == (1012, "service restart")
        returncode = await asyncio.wait_for(process.wait(), scaled(15))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (await stderr).decode()
    assert returncode == 0, log
    assert "gateway ready" in log and TOKEN not in log
