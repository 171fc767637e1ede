"""GeminiLiveClient <-> GeminiSimulator: goAway, drops, config updates, fatal closes, auth."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from protocol import (
    ConfigRejectedError,
    ProviderAuthError,
    RealtimeToolResponse,
    SessionState,
    TurnDetection,
)
from providers.gemini import GeminiLiveClient
from providers.simulator import SimScript, ToolCallScript
from providers.simulator.gemini import GeminiSimulator

from ...support.timing import scaled
from .conftest import (
    MODEL,
    WEATHER,
    Kit,
    native_config,
    received,
    sent_frames,
    silence,
    tone,
    utterance,
)

FRAME_MS = 20
FRAME_BYTES = 16000 * FRAME_MS // 1000 * 2


def quiet_frame(index: int) -> bytes:
    """A 20 ms 16 kHz frame of low noise: below the VAD, and different for every index."""
    rng = np.random.default_rng(index)
    return rng.integers(-200, 200, FRAME_BYTES // 2, dtype=np.int16).astype("<i2").tobytes()


def handles_sent(kit: Kit, index: int) -> list[str]:
    return [
        f["sessionResumptionUpdate"]["newHandle"]
        for f in sent_frames(kit.sim, "sessionResumptionUpdate", index)
        if f["sessionResumptionUpdate"].get("resumable")
    ]


async def test_go_away_mid_audio_switches_seamlessly(kit: Kit) -> None:
    client, rec = await kit.connected()
    kit.sim.setup_delay_s = 0.1  # the new connection's setup takes 100 ms, as on a real network
    sent: list[bytes] = []
    reconnecting_frames = 0
    stop = asyncio.Event()

    async def caller() -> None:
        # continuous caller audio at 4x real time, never pausing for the switch
        nonlocal reconnecting_frames
        index = 0
        while not stop.is_set():
            frame = quiet_frame(index)
            client.send_audio(frame)
            sent.append(frame)
            if client.state is SessionState.RECONNECTING:
                reconnecting_frames += 1
            index += 1
            await asyncio.sleep(FRAME_MS / 1000 / 4)

    feeder = asyncio.create_task(caller())
    await kit.sim.wait_for(lambda s: len(s.audio_in) >= 20 * FRAME_BYTES, timeout=scaled(5))
    last_handle = handles_sent(kit, 0)[-1]
    await kit.sim.go_away(time_left_s=scaled(2.0))
    await rec.wait_count("reconnected", seconds=5)
    await kit.sim.wait_for(
        lambda s: len(s.connections) == 2 and len(s.connections[1].audio_in) >= 20 * FRAME_BYTES,
        timeout=scaled(5),
    )
    stop.set()
    await feeder
    total = sum(len(f) for f in sent)
    await kit.sim.wait_for(lambda s: len(s.consumed_audio()) >= total, timeout=scaled(5))

    old, new = kit.sim.connections
    # every caller byte is in the resumed session exactly once, in order: the only handle
    # came with the setup, so the new socket first gets again what the old one took after it
    assert kit.sim.consumed_audio() == b"".join(sent)
    assert new.audio_in == b"".join(sent)
    assert new.audio_in.startswith(old.audio_in)
    # the old socket was closed by the client (1000, not the simulator's 1011 at the goAway
    # deadline) before the new setup arrived: the switch beat timeLeft (docs/decisions.md)
    assert old.closed and old.close_code == 1000
    assert old.session.closed_at <= new.session.setup_at  # type: ignore[union-attr]
    assert new.received[0]["setup"]["sessionResumption"] == {"handle": last_handle}
    assert [n for n in rec.names() if n in ("reconnecting", "reconnected", "closed")] == [
        "reconnecting",
        "reconnected",
    ]
    assert rec.of("reconnected")[0].strategy == "resumed"
    # at the first lossless point, not by the timer before the deadline ("goAway deadline")
    assert rec.of("reconnecting")[0].reason == "goAway"
    assert client.audio_stats.dropped_frames == 0

    switch_s = new.session.first_audio_at - old.session.go_away_at  # type: ignore[union-attr,operator]
    print(
        f"\ngoAway switch: {switch_s * 1000:.1f} ms from goAway to the first audio on the new "
        f"socket; {reconnecting_frames} caller frames ({reconnecting_frames * FRAME_MS} ms) "
        f"buffered during the switch and delivered after setupComplete; "
        f"{len(received(kit.sim, 'realtimeInput', 1))} audio messages on the new socket"
    )


async def test_go_away_waits_for_the_turn_to_finish(kit: Kit) -> None:
    kit.sim.script.speed = 4.0
    kit.sim.script.reply_audio_ms = 1200
    client, rec = await kit.connected()
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("audio")
    await kit.sim.go_away(time_left_s=scaled(3.0))
    await rec.wait_count("reconnected", seconds=5)
    # the reply finished on the old socket before the switch: nothing was cut
    assert [d.status for d in rec.of("response-done")] == ["completed"]
    assert rec.names().index("response-done") < rec.names().index("reconnecting")
    new = kit.sim.connections[1]
    assert new.received[0]["setup"]["sessionResumption"] == {"handle": handles_sent(kit, 0)[-1]}
    assert new.model.conversation.texts("assistant") == [kit.sim.script.reply_text]


async def test_go_away_deadline_fires_without_messages(kit: Kit) -> None:
    kit.sim.script.tool_call = ToolCallScript(on_turn=1)
    client, rec = await kit.connected(native_config(tools=[WEATHER]), go_away_margin_s=0.2)
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("tool-call")
    call_id = rec.of("tool-call")[0].call_id
    await kit.sim.go_away(time_left_s=scaled(0.6))  # no resumable point comes: a call is pending
    await rec.wait_count("reconnected", seconds=5)
    # the client's own timer, min(margin, timeLeft/2) before the deadline (docs/decisions.md),
    # started the switch: not a message, and not the simulator's close at the deadline
    assert [e.reason for e in rec.of("reconnecting")] == ["goAway deadline"]
    # the resumed session predates the call: it is reported cancelled, its result dropped
    assert rec.of("tool-call-cancelled")[0].call_ids == [call_id]
    assert [d.status for d in rec.of("response-done")] == ["incomplete"]
    kit.sim.script.tool_call = None
    client.send_tool_response([RealtimeToolResponse(call_id=call_id, output="late")])
    client.request_response("Hello again")
    await rec.wait_count("response-done", 2)
    assert received(kit.sim, "toolResponse") == []


async def test_drop_1011_resumes_with_backoff(kit: Kit) -> None:
    client, rec = await kit.connected()
    for frame in utterance():  # in real time: the handle after the reply covers the speech
        client.send_audio(frame)
        await asyncio.sleep(FRAME_MS / 1000)
    await rec.wait_count("response-done")
    handle = handles_sent(kit, 0)[-1]
    await kit.sim.drop(1011, "Internal error encountered.")
    await rec.wait_count("reconnected")
    assert rec.of("reconnecting")[0].code == 1011
    assert rec.of("reconnected")[0].strategy == "resumed"
    new = kit.sim.connections[1]
    assert new.received[0]["setup"]["sessionResumption"] == {"handle": handle}
    # the resumed conversation is the old one: the next turn continues it
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("response-done", 2)
    assert new.model.conversation.texts() == [
        "caller speech",
        kit.sim.script.reply_text,
        "caller speech",
        kit.sim.script.reply_text,
    ]
    assert rec.count("closed") == 0 and client.connected


async def test_tool_result_given_during_a_reconnect_is_not_lost_silently(kit: Kit) -> None:
    kit.sim.script.tool_call = ToolCallScript(on_turn=1)
    client, rec = await kit.connected(native_config(tools=[WEATHER]))
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("tool-call")
    call_id = rec.of("tool-call")[0].call_id

    def answer_now(_event: object) -> None:  # the app answers while the client reconnects
        client.send_tool_response([RealtimeToolResponse(call_id=call_id, output="sunny")])

    client.on("reconnecting", answer_now)
    await kit.sim.drop(1011)
    await rec.wait_count("reconnected")
    # the resumed session predates the call: the held result is dropped and the app is told
    assert rec.of("tool-call-cancelled")[0].call_ids == [call_id]
    assert rec.names().index("tool-call-cancelled") < rec.names().index("reconnected")
    kit.sim.script.tool_call = None
    client.request_response("Still there?")
    await rec.wait(lambda r: any(d.status == "completed" for d in r.of("response-done")))
    assert received(kit.sim, "toolResponse") == []


async def test_drop_without_handle_replays_the_conversation(kit: Kit) -> None:
    config = native_config(provider_options={"setup": {"sessionResumption": None}})
    client, rec = await kit.connected(config)
    client.request_response("My name is Ada.")
    await rec.wait_count("response-done")
    assert handles_sent(kit, 0) == []
    await kit.sim.drop(None)  # abnormal closure (1006)
    await rec.wait_count("reconnected")
    assert rec.of("reconnected")[0].strategy == "replayed"
    new = kit.sim.connections[1]
    assert "sessionResumption" not in new.received[0]["setup"]
    await kit.sim.wait_for(
        lambda s: len(s.connections[1].model.conversation) == 2, timeout=scaled(5)
    )
    assert new.received[1] == {
        "clientContent": {
            "turns": [
                {"role": "user", "parts": [{"text": "My name is Ada."}]},
                {"role": "model", "parts": [{"text": kit.sim.script.reply_text}]},
            ],
            "turnComplete": False,
        }
    }
    assert new.model.conversation.texts() == ["My name is Ada.", kit.sim.script.reply_text]


async def test_config_update_resumes_and_keeps_unnamed_fields(kit: Kit) -> None:
    config = native_config(instructions="Old.", voice="Puck", tools=[WEATHER], temperature=0.4)
    client, rec = await kit.connected(config)
    handle = handles_sent(kit, 0)[-1]
    await asyncio.wait_for(client.update_config({"instructions": "New."}), scaled(5))
    assert [e.strategy for e in rec.of("config-updated")] == ["resumed"]
    old_setup = kit.sim.connections[0].received[0]["setup"]
    new_setup = kit.sim.connections[1].received[0]["setup"]
    assert new_setup["systemInstruction"] == {"parts": [{"text": "New."}]}
    assert new_setup["sessionResumption"] == {"handle": handle}
    for key in ("generationConfig", "tools", "model", "contextWindowCompression"):
        assert new_setup[key] == old_setup[key]
    assert client.config is not None and client.config.voice == "Puck"
    assert client.config.temperature == 0.4 and client.config.instructions == "New."
    assert kit.sim.connections[0].close_code == 1000
    assert rec.count("closed") == 0


async def test_config_update_changes_turn_detection(kit: Kit) -> None:
    client, rec = await kit.connected()
    await client.update_config({"turn_detection": TurnDetection(silence_ms=700)})
    setup = kit.sim.connections[1].received[0]["setup"]
    assert setup["realtimeInputConfig"] == {
        "automaticActivityDetection": {"silenceDurationMs": 700}
    }
    # a 500 ms pause no longer ends the turn (it would at the default 300 ms); 800 ms does
    for chunk in (tone(400), silence(500), tone(400), silence(800)):
        client.send_audio(chunk)
    await rec.wait_count("response-done")
    assert kit.sim.turns == 1


async def test_fatal_1008_unknown_model_at_connect(kit: Kit) -> None:
    client = kit.client(model="gemini-missing-model")
    with pytest.raises(ConfigRejectedError) as info:
        await client.connect(native_config())
    assert info.value.code == "1008" and not info.value.recoverable
    assert "models/gemini-missing-model is not found for API version v1beta" in info.value.message
    assert len(kit.sim.connections) == 1  # no retry
    assert client.state is SessionState.IDLE


async def test_fatal_1007_malformed_setup_at_connect(kit: Kit) -> None:
    client = kit.client()
    config = native_config(provider_options={"setup": {"responseModalites": ["AUDIO"]}})
    with pytest.raises(ConfigRejectedError) as info:
        await client.connect(config)
    assert info.value.code == "1007" and "invalid argument" in info.value.message
    assert len(kit.sim.connections) == 1


async def test_wrong_api_key_is_an_auth_error() -> None:
    async with GeminiSimulator(SimScript(api_key="good-key"), validate=True) as sim:
        client = GeminiLiveClient(model=MODEL, url=sim.url, api_key="bad-key")
        with pytest.raises(ProviderAuthError) as info:
            await client.connect(native_config())
        assert info.value.code == "1008" and "API key not valid" in info.value.message
        assert "bad-key" not in str(info.value)
        assert len(sim.connections) == 1


@pytest.mark.parametrize(("auth", "where"), [("header", "header"), ("query", "query")])
async def test_api_key_travels_as_configured(auth: str, where: str) -> None:
    async with GeminiSimulator(SimScript(api_key="good-key"), validate=True) as sim:
        client = GeminiLiveClient(model=MODEL, url=sim.url, api_key="good-key", auth=auth)
        await client.connect(native_config())
        conn = sim.connections[0]
        if where == "header":
            assert conn.request_headers["x-goog-api-key"] == "good-key" and "key" not in conn.query
        else:
            assert conn.query["key"] == "good-key" and "x-goog-api-key" not in conn.request_headers
        assert "good-key" not in repr(client)
        await client.disconnect()


async def test_fatal_1008_on_a_live_session(kit: Kit) -> None:
    client, rec = await kit.connected()
    await kit.sim.drop(1008, "Operation is not implemented, or supported, or enabled.")
    await rec.wait_count("closed")
    errors = rec.of("error")
    assert len(errors) == 1 and not errors[0].recoverable and errors[0].code == "1008"
    assert rec.names()[-2:] == ["error", "closed"]
    assert rec.count("reconnecting") == 0 and len(kit.sim.connections) == 1
    assert not client.connected


async def test_malformed_server_frames_are_reported_and_the_session_goes_on(kit: Kit) -> None:
    client, rec = await kit.connected()
    conn = kit.sim.connections[0]
    assert conn.ws is not None
    await conn.ws.send("{not json")
    await conn.ws.send(json.dumps({"serverContent": "x"}))
    # half usable: the call before the bad one is still announced, then the error
    calls = [{"id": "a", "name": "get_weather"}, {"id": "b"}]
    await conn.ws.send(json.dumps({"toolCall": {"functionCalls": calls}}))
    await rec.wait_count("error", 3)
    errors = rec.of("error")
    assert [e.code for e in errors] == ["malformed_frame"] * 3
    assert all(e.recoverable for e in errors)
    assert [c.call_id for c in rec.of("tool-call")] == ["a"]
    assert rec.names()[-2:] == ["tool-call", "error"]
    client.send_tool_response([RealtimeToolResponse(call_id="a", output={"temp_c": 18})])
    for frame in utterance():
        client.send_audio(frame)
    await rec.wait_count("response-done")
    assert client.state is SessionState.LIVE and rec.count("reconnecting") == 0


async def test_resume_refused_while_the_old_socket_is_open(kit: Kit) -> None:
    client, rec = await kit.connected()
    handle = handles_sent(kit, 0)[-1]
    async with websockets.connect(kit.sim.url) as ws:
        setup = {"setup": {"model": f"models/{MODEL}", "sessionResumption": {"handle": handle}}}
        await ws.send(json.dumps(setup))
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert client.connected and rec.count("reconnecting") == 0


async def test_disconnect_is_idempotent_and_closed_once(kit: Kit) -> None:
    client, rec = await kit.connected()
    assert await client.ping()
    await client.disconnect()
    await client.disconnect()
    assert rec.count("closed") == 1 and not client.connected
    await kit.sim.wait_for(lambda s: s.connections[0].closed, timeout=scaled(5))
    assert kit.sim.connections[0].close_code == 1000
    assert not await client.ping()


def test_capabilities_are_truthful() -> None:
    caps = GeminiLiveClient.capabilities
    assert caps.config_update == "resumed" and caps.session_resumption
    assert caps.tool_call_cancellation and not caps.message_truncation and not caps.semantic_vad
    assert (caps.native_input_sample_rate, caps.native_output_sample_rate) == (16000, 24000)
    assert caps.input_encodings == ("pcm16",) and caps.max_connection_seconds == 600
