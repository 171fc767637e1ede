"""Connection lifecycle of the OpenAI client: reconnect, fatal errors, recycle, disconnect."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from protocol import (
    ConfigRejectedError,
    NotConnectedError,
    ProviderAuthError,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ToolDefinition,
)
from providers.openai import OpenAIRealtimeClient
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript

from ...support.timing import scaled


def replayed_items(conn: Any) -> list[dict[str, Any]]:
    return [f["item"] for f in conn.received if f["type"] == "conversation.item.create"]


async def test_reconnect_after_drop_replays_and_delivers_audio_exactly_once(kit: Any) -> None:
    script = SimScript(reply_text="Nice to meet you.", speed=0, tool_call=None)
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(instructions="Be kind."))
        first = await kit.say(client)
        await rec.wait_count("response-done")
        await sim.wait_for(lambda s: len(s.audio_in) == len(first), timeout=scaled(5))

        during = kit.tone(200)

        def feed_while_reconnecting(_event: Any) -> None:
            for frame in kit.chunks(during, 960):
                client.send_audio(frame)  # no socket now: buffered, delivered after

        client.on("reconnecting", feed_while_reconnecting)
        await sim.drop(1011)
        await rec.wait_count("reconnected")
        after = await kit.say(client)
        await rec.wait_count("response-done", 2)
        total = first + during + after
        await sim.wait_for(lambda s: len(s.audio_in) >= len(total), timeout=scaled(5))
        await client.disconnect()

    assert sim.audio_in == total  # none lost, none duplicated, in order
    assert len(sim.connections) == 2
    old, new = sim.connections
    assert old.close_code == 1011
    assert new.audio_in == during + after
    (reconnecting,) = rec.of("reconnecting")
    assert reconnecting.code == 1011
    (reconnected,) = rec.of("reconnected")
    assert reconnected.strategy == "replayed"
    assert rec.count("closed") == 1 and rec.names()[-1] == "closed"
    assert new.received[0]["type"] == "session.update"
    assert new.received[0]["session"]["instructions"] == "Be kind."
    assert replayed_items(new) == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": script.user_transcript}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Nice to meet you."}],
        },
    ]
    texts = [item.text for item in new.model.conversation.items][:2]
    assert texts == [script.user_transcript, "Nice to meet you."]
    assert kit.server_errors(sim) == []


async def test_tool_result_given_during_a_reconnect_is_delivered_once(kit: Any) -> None:
    script = SimScript(reply_text="Done.", speed=0, tool_call=ToolCallScript(on_turn=1))
    tools = [ToolDefinition(name="lookup")]
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim, RealtimeSessionConfig(tools=tools))
        await kit.say(client)
        await rec.wait_count("response-done")
        (call,) = rec.of("tool-call")

        def answer_now(_event: Any) -> None:
            client.send_tool_response([RealtimeToolResponse(call_id=call.call_id, output="42")])

        client.on("reconnecting", answer_now)
        await sim.drop(1011)
        await rec.wait_count("reconnected")
        await rec.wait_count("response-done", 2)
        await client.disconnect()

    old, new = sim.connections
    outputs = [i for i in replayed_items(new) if i["type"] == "function_call_output"]
    assert outputs == [{"type": "function_call_output", "call_id": call.call_id, "output": "42"}]
    calls = [i for i in replayed_items(new) if i["type"] == "function_call"]
    assert [c["call_id"] for c in calls] == [call.call_id]
    assert [f["type"] for f in new.received].count("response.create") == 1
    assert not [f for f in old.received if f["type"] == "conversation.item.create"]
    final = [t.text for t in rec.of("transcript") if t.role == "assistant" and t.final]
    assert final and "42" in final[-1]
    assert kit.server_errors(sim) == []


async def test_invalid_key_raises_auth_error_without_retry(kit: Any) -> None:
    async with OpenAISimulator(SimScript(api_key="sk-right")) as sim:
        client = kit.client(sim, api_key="sk-wrong")
        rec = kit.Recorder(client)
        with pytest.raises(ProviderAuthError) as info:
            await client.connect(RealtimeSessionConfig())
        assert info.value.code == "invalid_api_key"
        assert "sk-wrong" not in str(info.value)
        assert len(sim.rejected) == 1
        assert sim.connections == []
        assert client.connected is False
        assert rec.events == []
        with pytest.raises(NotConnectedError):
            client.send_audio(b"\x00\x00")


async def test_fatal_error_on_a_live_session_closes_without_retry(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client, rec = await kit.session(sim)
        await sim.send_error(code="insufficient_quota", message="You exceeded your quota.")
        await rec.wait_count("closed")
        await client.disconnect()  # idempotent after a fatal end
    (error,) = rec.of("error")
    assert (error.code, error.recoverable) == ("insufficient_quota", False)
    assert rec.names() == ["connected", "error", "closed"]
    assert len(sim.connections) == 1
    assert client.connected is False


async def test_policy_close_is_fatal(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        _client, rec = await kit.session(sim)
        await sim.drop(1008, "policy violation")
        await rec.wait_count("closed")
    assert rec.of("error")[0].recoverable is False
    assert rec.count("reconnecting") == 0
    assert len(sim.connections) == 1


async def test_recoverable_error_keeps_the_session(kit: Any) -> None:
    script = SimScript(reply_text="Still here.", speed=0, tool_call=None)
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim)
        await sim.send_error(code="server_error", message="Transient failure.")
        await rec.wait_count("error")
        await kit.say(client)
        await rec.wait_count("response-done")
        assert await client.ping() is True
        await client.disconnect()
    (error,) = rec.of("error")
    assert (error.code, error.recoverable) == ("server_error", True)
    assert "Transient failure." in error.message
    assert rec.count("reconnecting") == 0
    assert rec.count("closed") == 1


async def test_malformed_server_frame_is_reported_and_the_session_goes_on(kit: Any) -> None:
    async with OpenAISimulator(SimScript(speed=0, tool_call=None)) as sim:
        client, rec = await kit.session(sim)
        conn = sim.connections[0]
        assert conn.ws is not None
        await conn.ws.send("{not json")
        await conn.ws.send('{"type": "response.output_audio.delta", "delta": 5}')
        await conn.ws.send('{"type": "brand.new.event"}')
        await rec.wait_count("error", 2)
        await kit.say(client)
        await rec.wait_count("response-done")
        await client.disconnect()
    assert [e.code for e in rec.of("error")] == ["malformed_frame", "malformed_frame"]
    assert all(e.recoverable for e in rec.of("error"))


async def test_disconnect_is_idempotent_and_closed_is_emitted_once(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client, rec = await kit.session(sim)
        await asyncio.gather(client.disconnect(), client.disconnect())
        await client.disconnect()
        await sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(5))
    assert rec.count("closed") == 1
    assert rec.of("closed")[0].code == 1000
    assert sim.connections[0].close_code == 1000
    assert client.connected is False
    assert await client.ping() is False
    with pytest.raises(NotConnectedError):
        client.send_audio(b"\x00\x00")


async def test_azure_api_key_header_reaches_the_server(kit: Any) -> None:
    async with OpenAISimulator(SimScript(api_key="azure-secret", tool_call=None)) as sim:
        url = f"ws://{sim.host}:{sim.port}/openai/v1/realtime"
        client = OpenAIRealtimeClient(
            model="my-deployment", api_key="azure-secret", url=url, auth_header="api-key"
        )
        await client.connect(RealtimeSessionConfig())
        await client.disconnect()
    (conn,) = sim.connections
    assert conn.path == "/openai/v1/realtime"
    assert conn.query == {"model": "my-deployment"}
    assert conn.request_headers["api-key"] == "azure-secret"
    assert "authorization" not in conn.request_headers
    assert "openai-beta" not in conn.request_headers


async def test_bearer_header_and_no_beta_header_by_default(kit: Any) -> None:
    async with OpenAISimulator(SimScript(api_key="sk-test", tool_call=None)) as sim:
        client, _ = await kit.session(sim, api_key="sk-test")
        await client.disconnect()
    (conn,) = sim.connections
    assert conn.request_headers["authorization"] == "Bearer sk-test"
    assert "openai-beta" not in conn.request_headers
    assert conn.query == {"model": "gpt-realtime"}


async def test_recycle_waits_for_the_turn_then_replays(kit: Any) -> None:
    script = SimScript(reply_text="A reply that lasts a moment.", speed=4.0, tool_call=None)
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim, recycle_after_s=0.15)
        await kit.say(client)
        await rec.wait_count("reconnected", seconds=10)
        await kit.say(client)
        await rec.wait_count("response-done", 2, seconds=10)
        await client.disconnect()
    names = rec.names()
    # the timer fired during the reply; the recycle waited for the turn to end
    assert names.index("response-done") < names.index("reconnecting")
    assert rec.of("reconnecting")[0].reason == "recycle"
    assert rec.of("reconnected")[0].strategy == "replayed"
    old, new = sim.connections[:2]
    assert old.close_code == 1000
    assert [i["role"] for i in replayed_items(new)] == ["user", "assistant"]
    assert rec.count("closed") == 1
    assert kit.server_errors(sim) == []


async def test_session_cap_close_reconnects(kit: Any) -> None:
    async with OpenAISimulator(SimScript(max_session_s=0.1, tool_call=None)) as sim:
        client, rec = await kit.session(sim)
        await rec.wait_count("reconnected")
        sim.script.max_session_s = None
        await client.disconnect()
    assert rec.of("reconnecting")[0].code == 1001
    assert sim.connections[0].close_code == 1001
    assert rec.count("error") == 0


async def test_api_key_never_appears_in_logs_events_or_errors(
    kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-very-secret-key-123"
    caplog.set_level(logging.DEBUG)
    async with OpenAISimulator(SimScript(api_key=secret, speed=0, tool_call=None)) as sim:
        client, rec = await kit.session(sim, api_key=secret)
        await kit.say(client)
        await rec.wait_count("response-done")
        await sim.drop(1011)
        await rec.wait_count("reconnected")
        await client.disconnect()
        wrong = kit.client(sim, api_key=secret + "-wrong")
        with pytest.raises(ProviderAuthError) as info:
            await wrong.connect(RealtimeSessionConfig())
    assert sim.connections[0].request_headers["authorization"] == f"Bearer {secret}"
    # The simulator's own server logs (websockets.server) print request headers; they are the
    # test server's, not the client's.
    client_side = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert client_side
    assert all(secret not in r.getMessage() for r in client_side)
    assert secret not in repr(client)
    assert secret not in str(info.value)
    assert all(secret not in repr(payload) for _, payload in rec.events)


async def test_exported_state_replays_on_a_new_client(kit: Any) -> None:
    script = SimScript(reply_text="Noted.", speed=0, tool_call=None)
    async with OpenAISimulator(script) as sim:
        first, rec = await kit.session(sim)
        await kit.say(first)
        await rec.wait_count("response-done")
        state = first.export_state()
        await first.disconnect()

        second = kit.client(sim)
        assert second.import_state({"items": [{"type": "bogus"}]}) is None
        assert second.import_state(state) == "replayed"
        await second.connect(RealtimeSessionConfig())
        await second.disconnect()
    new = sim.connections[1]
    assert [(i["role"], i["content"][0]["text"]) for i in replayed_items(new)] == [
        ("user", script.user_transcript),
        ("assistant", "Noted."),
    ]
    assert kit.server_errors(sim) == []


async def test_key_revoked_during_a_reconnect_is_fatal_without_a_retry_loop(kit: Any) -> None:
    script = SimScript(api_key="sk-old", tool_call=None)
    async with OpenAISimulator(script) as sim:
        client, rec = await kit.session(sim, api_key="sk-old", reconnect_attempts=5)
        script.api_key = "sk-rotated"
        await sim.drop(1011)
        await rec.wait_count("closed")
    assert len(sim.rejected) == 1  # one attempt, no loop
    assert [n for n in rec.names() if n != "error"] == ["connected", "reconnecting", "closed"]
    (error,) = rec.of("error")
    assert (error.code, error.recoverable) == ("invalid_api_key", False)
    assert client.connected is False


async def test_gives_up_after_the_configured_attempts(kit: Any) -> None:
    sim = OpenAISimulator(SimScript(tool_call=None))
    await sim.start()
    client, rec = await kit.session(sim, reconnect_attempts=2)
    await sim.stop()  # closes with 1001 and stops listening: every reconnect is refused
    await rec.wait_count("closed")
    (error,) = rec.of("error")
    assert (error.code, error.recoverable) == ("reconnect_failed", False)
    assert "2 attempt" in error.message
    assert rec.names() == ["connected", "reconnecting", "error", "closed"]
    assert client.connected is False


async def test_continuous_audio_across_a_drop_is_never_duplicated(kit: Any) -> None:
    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client, rec = await kit.session(sim)
        total = 400

        async def feed() -> None:
            for n in range(total):
                client.send_audio(n.to_bytes(2, "little") * 480)  # 20 ms, numbered
                await asyncio.sleep(0.0005)

        feeding = asyncio.create_task(feed())
        await sim.wait_for(lambda s: len(s.audio_in) >= 100 * 960, timeout=scaled(5))
        await sim.drop(1011)
        await feeding
        await rec.wait_count("reconnected")
        pushed = client.audio_stats.pushed_bytes
        await sim.wait_for(
            lambda s: s.connections[-1].audio_in.endswith((total - 1).to_bytes(2, "little") * 480),
            timeout=scaled(5),
        )
        await client.disconnect()
    audio = sim.audio_in
    numbers = [int.from_bytes(audio[i : i + 2], "little") for i in range(0, len(audio), 960)]
    assert numbers == sorted(set(numbers))  # in order, no frame twice
    missing = sorted(set(range(total)) - set(numbers))
    # only frames the dying socket had already taken can be missing: one contiguous run
    if missing:
        assert missing == list(range(missing[0], missing[0] + len(missing)))
    assert len(missing) <= 10
    assert pushed == total * 960


async def test_error_then_close_during_connect_raises_with_the_provider_code(kit: Any) -> None:
    class BetaHeaderClient(OpenAIRealtimeClient):
        """Sends the beta header the GA client never sends: the server refuses the session."""

        def _endpoint(self) -> Any:
            endpoint = super()._endpoint()
            headers = {**endpoint.headers, "OpenAI-Beta": "realtime=v1"}
            return type(endpoint)(endpoint.url, headers, endpoint.display_url)

    async with OpenAISimulator(SimScript(tool_call=None)) as sim:
        client = BetaHeaderClient(model="gpt-realtime", url=sim.url)
        with pytest.raises(ConfigRejectedError) as info:
            await client.connect(RealtimeSessionConfig())
    assert info.value.code == "beta_api_shape_disabled"
    assert sim.connections[0].close_code == 4000
    assert client.connected is False
