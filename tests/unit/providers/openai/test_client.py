"""OpenAIRealtimeClient construction, options and endpoint (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import ConfigError, NotConnectedError, RealtimeSessionConfig
from providers import create_client
from providers.openai import DEFAULT_URL, OpenAIRealtimeClient


def test_registry_builds_the_client() -> None:
    client = create_client("openai", model="gpt-realtime", api_key="sk-x")
    assert isinstance(client, OpenAIRealtimeClient)
    assert (client.provider, client.model, client.connected) == ("openai", "gpt-realtime", False)


def test_capabilities_are_truthful() -> None:
    caps = OpenAIRealtimeClient.capabilities
    assert caps.request_response and caps.message_truncation and caps.tool_call_cancellation
    assert caps.semantic_vad and not caps.session_resumption
    assert caps.config_update == "in-place"
    assert (caps.native_input_sample_rate, caps.native_output_sample_rate) == (24000, 24000)
    assert caps.input_encodings == ("pcm16", "mulaw", "alaw")
    assert caps.max_connection_seconds == 3600


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bufer_ms": 5}, "unknown OpenAIRealtimeClient option"),
        ({"auth_header": "x-key"}, "auth_header"),
        ({"max_buffer_ms": 0}, "max_buffer_ms"),
        ({"reconnect_attempts": -1}, "reconnect_attempts"),
        ({"recycle_after_s": 0}, "recycle_after_s"),
        ({"url": "https://api.openai.com/v1/realtime"}, "ws:// or wss://"),
        ({"transcription_model": ""}, "transcription_model"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OpenAIRealtimeClient(model="gpt-realtime", api_key="sk-x", **kwargs)


def test_endpoint_appends_the_model_and_uses_a_bearer_header() -> None:
    endpoint = OpenAIRealtimeClient(model="gpt-realtime", api_key="sk-abc")._endpoint()
    assert endpoint.url == f"{DEFAULT_URL}?model=gpt-realtime"
    assert dict(endpoint.headers) == {"Authorization": "Bearer sk-abc"}
    assert "sk-abc" not in endpoint.safe_url()


def test_azure_endpoint_keeps_its_query_and_uses_api_key() -> None:
    client = OpenAIRealtimeClient(
        model="my-deployment",
        api_key="azure",
        url="wss://res.openai.azure.com/openai/v1/realtime?api-version=2025-08-28",
        auth_header="api-key",
    )
    endpoint = client._endpoint()
    assert endpoint.url == (
        "wss://res.openai.azure.com/openai/v1/realtime?api-version=2025-08-28&model=my-deployment"
    )
    assert dict(endpoint.headers) == {"api-key": "azure"}


async def test_missing_key_is_a_config_error_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = OpenAIRealtimeClient(model="gpt-realtime")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await client.connect(RealtimeSessionConfig())
    assert client.connected is False


def test_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    headers = OpenAIRealtimeClient(model="gpt-realtime")._endpoint().headers
    assert headers["Authorization"] == "Bearer sk-env"


def test_loopback_simulator_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = OpenAIRealtimeClient(model="gpt-realtime", url="ws://127.0.0.1:9/v1/realtime")
    assert client._endpoint().headers["Authorization"].startswith("Bearer ")


def test_calls_before_connect_raise_not_connected() -> None:
    client = OpenAIRealtimeClient(model="gpt-realtime", api_key="sk-x")
    with pytest.raises(NotConnectedError):
        client.send_audio(b"\x00\x00")
    with pytest.raises(NotConnectedError):
        client.request_response("hi")
    with pytest.raises(NotConnectedError):
        client.send_tool_response([])
    assert "sk-x" not in repr(client)


async def test_disconnect_before_connect_is_a_no_op() -> None:
    client = OpenAIRealtimeClient(model="gpt-realtime", api_key="sk-x")
    closed: list[Any] = []
    client.on("closed", closed.append)
    await client.disconnect()
    await client.disconnect()
    assert closed == []
    assert await client.ping() is False
