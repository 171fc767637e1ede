"""The gateway and ``voicegrid demo`` on a Redis Cluster (queue on its own Redis), as issue 13
asks of every role: a caller over the gateway's WebSocket talks to a worker through the cluster,
and the demo's distributed call runs on it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from ingress.gateway import Gateway
from ingress.settings import GatewaySettings
from providers.simulator import OpenAISimulator

from ...support.timing import scaled
from ..runtime.faultkit import numbered_frame
from .conftest import ClusterSetup
from .test_cluster_sessions import SCRIPT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


async def test_a_gateway_caller_talks_through_the_cluster(
    shared_cluster: ClusterSetup, start_workers: Any, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        worker = start_workers("a", shared_cluster, sim.url)
        await worker.wait_ready()
        settings = GatewaySettings(
            redis_url=shared_cluster.url,
            queue_url=shared_cluster.queue_url,
            namespace=namespace,
            metrics_port=0,
        )
        assert settings.cluster
        gateway = Gateway(settings, host="127.0.0.1", port=0, start_timeout_s=5.0)
        await gateway.start()
        try:
            url = f"ws://127.0.0.1:{gateway.port}/v1/sessions"
            async with connect(url, open_timeout=scaled(5)) as ws:
                start = {"type": "session.start", "provider": "openai", "model": "m"}
                await ws.send(orjson.dumps(start).decode())
                texts: list[dict[str, Any]] = []
                audio = 0

                async def read() -> None:
                    nonlocal audio
                    async for message in ws:
                        if isinstance(message, bytes):
                            audio += 1
                        else:
                            texts.append(orjson.loads(message))

                reader = asyncio.create_task(read())
                try:
                    # half a second of speech, then silence until the model answers
                    for seq in range(250):
                        await ws.send(numbered_frame(260, seq, speech=seq < 25))
                        await asyncio.sleep(0.02)
                        if audio >= 5:
                            break
                    assert any(t["type"] == "session.started" for t in texts), texts
                    assert audio >= 5, f"no model audio through the cluster: {texts[-5:]}"
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        finally:
            await gateway.drain()
            await gateway.close()


async def test_the_demo_runs_its_distributed_call_on_a_cluster(
    shared_cluster: ClusterSetup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from voicegrid.cli import build_parser
    from voicegrid.demo import _main

    monkeypatch.setenv("REDIS_URL", shared_cluster.url)
    monkeypatch.setenv("VOICEGRID_QUEUE_URL", shared_cluster.queue_url)
    args = build_parser().parse_args(["demo", "--fast", "--out", str(tmp_path / "r.wav")])
    assert await _main(args) == 0
    out = capsys.readouterr().out
    assert "a Redis Cluster (REDIS_URL; queue on VOICEGRID_QUEUE_URL)" in out
    assert "call get_weather" in out and "response completed" in out
    assert "  error  " not in out
    assert (tmp_path / "r.wav").stat().st_size > 24000
