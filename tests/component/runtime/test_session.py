"""A whole session through ingress -> Redis (fakeredis) -> in-process arq worker -> provider."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    ConfigError,
    NotConnectedError,
    ProviderAuthError,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ToolDefinition,
)
from protocol.keys import Keys

CONFIG = RealtimeSessionConfig(
    instructions="be brief",
    tools=[ToolDefinition(name="weather", description="weather by city")],
)


async def test_full_session_with_every_command(
    start_worker: Any, make_client: Any, fakes: Any, recorder: Any, wait_until: Any
) -> None:
    await start_worker()
    client = make_client(tag="full")
    events = recorder(client)
    await client.connect(CONFIG)
    assert client.connected and client.session_id
    assert client.capabilities.config_update == "in-place"  # mirrored from the provider
    assert [n for n, _ in events.events][:1] == ["connected"]

    frames = [bytes([i, 0]) * 480 for i in range(1, 11)]
    for frame in frames:
        client.send_audio(frame)
    await events.wait_for(lambda: len(events.of("audio")) == 10)
    assert [a.data for a in events.of("audio")] == frames  # provider order, raw bytes
    provider = fakes["full"][0]
    assert provider.frames == frames

    client.request_response("call a tool")
    await events.wait_for(lambda: events.of("tool-call"))
    call = events.of("tool-call")[0]
    assert (call.name, call.arguments) == ("weather", {"city": "Paris"})
    client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output={"temp": 21})])
    await events.wait_for(lambda: events.of("response-done"))
    assert provider.tool_responses[0].output == {"temp": 21}

    assert await client.ping() is True
    await client.update_config({"instructions": "be verbose"})
    assert [e.strategy for e in events.of("config-updated")] == ["in-place"]
    assert provider.config is not None and provider.config.instructions == "be verbose"

    await client.disconnect()
    assert not client.connected
    await events.wait_for(lambda: events.of("closed"))
    assert provider.disconnected
    with pytest.raises(NotConnectedError):
        client.send_audio(b"\x00\x00")


async def test_connect_raises_the_workers_provider_error(
    start_worker: Any, make_client: Any, recorder: Any
) -> None:
    await start_worker()
    client = make_client(model="reject-key")
    with pytest.raises(ProviderAuthError) as info:
        await client.connect(CONFIG)
    assert info.value.code == "invalid_api_key"
    assert not client.connected


async def test_session_state_and_streams_expire_after_the_session(
    start_worker: Any, make_client: Any, make_redis: Any
) -> None:
    await start_worker()
    client = make_client()
    await client.connect(CONFIG)
    client.send_audio(b"\x01\x00" * 10)
    sid = client.session_id
    await client.disconnect()
    redis = make_redis()
    keys = Keys("vgtest").session(sid)
    assert await redis.hget(keys.state, "status") == b"closed"
    for key in (keys.state, keys.input, keys.output):
        ttl = await redis.pttl(key)
        assert 0 < ttl <= 300_000, key
    assert not await redis.exists(keys.lease)
    assert await redis.zscore("vgtest:live", sid) is None


def test_the_ingress_refuses_credentials_and_unserialisable_options() -> None:
    from ingress import RedisRealtimeClient
    from protocol import InvalidSessionId

    with pytest.raises(ConfigError, match="api_key"):
        RedisRealtimeClient("redis://x", provider="openai", model="m", api_key="sk-secret")
    with pytest.raises(ConfigError, match="JSON"):
        RedisRealtimeClient("redis://x", provider="openai", model="m", voice=object())
    with pytest.raises(InvalidSessionId):
        RedisRealtimeClient("redis://x", provider="openai", model="m", session_id="a{b}")
    client = RedisRealtimeClient("redis://:pw123@host:6379/2", provider="openai", model="m")
    assert "pw123" not in repr(client)
    assert client.provider == "openai" and client.session_id is None and not client.connected


async def test_send_before_connect_and_attach_to_unknown_sessions_fail_clearly(
    start_worker: Any, make_client: Any
) -> None:
    await start_worker()
    client = make_client()
    with pytest.raises(NotConnectedError):
        client.send_audio(b"\x00\x00")
    assert await client.ping() is False
    with pytest.raises(NotConnectedError, match="does not exist"):
        await make_client().attach("no-such-session")
    other = make_client(provider="other")
    await client.connect(CONFIG)
    with pytest.raises(ConfigError, match="runs provider 'fake'"):
        await other.attach(client.session_id)
    await client.disconnect()
    with pytest.raises(NotConnectedError, match="ended"):
        await make_client().attach(client.session_id)
