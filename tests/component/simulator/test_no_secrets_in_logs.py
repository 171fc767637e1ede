"""The simulator's server never logs the API keys callers present, even at DEBUG."""

from __future__ import annotations

import logging

import pytest

from protocol import RealtimeSessionConfig
from providers import create_client
from providers.simulator import OpenAISimulator, SimScript

SECRET = "sk-proj-do-not-log-me-4242"


async def test_api_key_never_reaches_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        async with OpenAISimulator(SimScript(api_key=SECRET)) as sim:
            client = create_client("openai", model="gpt-realtime", api_key=SECRET, url=sim.url)
            await client.connect(RealtimeSessionConfig())
            await client.disconnect()
            assert sim.connections[0].request_headers["authorization"] == f"Bearer {SECRET}"
    assert caplog.records, "expected DEBUG records from the connection"
    assert SECRET not in caplog.text
