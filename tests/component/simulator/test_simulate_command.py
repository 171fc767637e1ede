"""``voicegrid simulate`` serves the OpenAI protocol until SIGTERM, then exits cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import websockets

from ...support.net import free_port, voicegrid_command
from ...support.timing import scaled


async def test_simulate_serves_until_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "VOICEGRID_LOG_LEVEL": "WARNING", "VOICEGRID_SIM_API_KEY": "sk-cli"}
    proc = await asyncio.create_subprocess_exec(
        *voicegrid_command("simulate", "--protocol", "openai", "--port", str(port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(scaled(20)):
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode()
            assert f"ws://127.0.0.1:{port}/v1/realtime" in line
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            async with websockets.connect(
                url, additional_headers={"Authorization": "Bearer sk-cli"}
            ) as ws:
                created = json.loads(await ws.recv())
                assert created["type"] == "session.created"
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
