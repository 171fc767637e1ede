"""A whole call through the gateway: caller WebSocket -> gateway -> Redis (fakeredis) -> in-process
worker -> fake provider, and back."""

from __future__ import annotations

from typing import Any

from ...support.prometheus import registry_value
from .conftest import frame

CONFIG = {
    "instructions": "be brief",
    "tools": [{"name": "weather", "description": "weather by city"}],
    "output_audio": {"encoding": "pcm16", "sample_rate": 24000},
}


async def test_a_full_call_with_every_message(
    start_worker: Any, start_gateway: Any, open_caller: Any, fakes: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    frames_in = registry_value("voicegrid_gateway_frames_total", direction="in")
    frames_out = registry_value("voicegrid_gateway_frames_total", direction="out")
    caller = await open_caller(gw.url)

    started = await caller.start(config=CONFIG, options={"tag": "call"}, id="s1")
    assert started["id"] == "s1" and started["session_id"]
    assert (started["provider"], started["model"]) == ("fake", "fake-model")
    assert started["input_audio"] == {"encoding": "pcm16", "sample_rate": 24000}
    assert started["capabilities"]["request_response"] is True
    await caller.wait_for(lambda: bool(caller.of("connected")))
    assert caller.types[:2] == ["session.started", "connected"]  # held until announced
    assert caller.of("connected")[0]["event_id"]

    # binary audio in, binary audio out (the fake provider echoes), announced by audio.meta
    sent = [frame(i) for i in range(10)]
    for data in sent:
        await caller.send_raw(data)
    await caller.wait_for(lambda: len(caller.audio) == 10)
    assert caller.audio == sent
    provider = fakes["call"][0]
    assert provider.frames == sent
    assert caller.of("audio.meta") == [
        {"type": "audio.meta", "response_id": "r1", "sample_rate": 24000}
    ]
    assert registry_value("voicegrid_gateway_frames_total", direction="in") - frames_in == 10
    assert registry_value("voicegrid_gateway_frames_total", direction="out") - frames_out == 10

    # tool round trip
    await caller.send({"type": "response.request", "instruction": "call a tool", "id": 1})
    assert (await caller.reply(1))["type"] == "ack"
    await caller.wait_for(lambda: bool(caller.of("tool-call")))
    call = caller.of("tool-call")[0]
    assert (call["name"], call["arguments"], call["call_id"]) == (
        "weather",
        {"city": "Paris"},
        "call-1",
    )
    await caller.send(
        {
            "type": "tool.response",
            "id": "t1",
            "responses": [{"call_id": "call-1", "output": {"temp": 21}}],
        }
    )
    assert await caller.reply("t1") == {"type": "ack", "id": "t1", "command": "tool.response"}
    await caller.wait_for(lambda: bool(caller.of("response-done")))
    assert provider.tool_responses[0].output == {"temp": 21}
    transcript = caller.of("transcript")[-1]
    assert transcript["text"] == "result {'temp': 21}" and transcript["role"] == "assistant"

    # config update: acknowledged once the worker applied it, and reported as an event
    await caller.send({"type": "config.update", "id": "c1", "config": {"instructions": "more"}})
    assert (await caller.reply("c1"))["type"] == "ack"
    await caller.wait_for(lambda: bool(caller.of("config-updated")))
    assert caller.of("config-updated")[0]["strategy"] == "in-place"
    assert provider.config.instructions == "more"

    # a plain response request, then ping
    await caller.send({"type": "response.request"})
    await caller.wait_for(lambda: any(t["text"] == "hello" for t in caller.of("transcript")))
    assert provider.requests == ["call a tool", None]
    await caller.send({"type": "ping", "id": "p"})
    assert await caller.reply("p") == {"type": "pong", "alive": True, "id": "p"}

    # every session event carries a distinct, increasing event_id
    ids = [t["event_id"] for t in caller.texts if "event_id" in t]
    assert len(ids) == len(set(ids)) and ids == sorted(
        ids, key=lambda i: tuple(map(int, i.split("-")))
    )

    # end: closed event, ack, then close 1000
    await caller.send({"type": "session.end", "id": "end"})
    code, reason = await caller.wait_closed()
    assert (code, reason) == (1000, "session ended")
    assert len(caller.of("closed")) == 1 and "event_id" in caller.of("closed")[0]
    assert (await caller.reply("end"))["type"] == "ack"
    assert provider.disconnected


async def test_audio_marks_bound_the_resume_position(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.start()
    for i in range(120):
        await caller.send_raw(frame(i))
    await caller.wait_for(lambda: len(caller.audio) == 120)
    marks = caller.of("audio.mark")
    assert len(marks) == 2  # after frames 50 and 100
    assert caller.after == marks[-1]["event_id"] and caller.skip == 20


async def test_a_second_session_start_and_commands_before_start_are_refused(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.send({"type": "ping", "id": "early"})
    assert await caller.reply("early") == {
        "type": "error",
        "code": "not_started",
        "message": "ping before session.started is dropped",
        "recoverable": True,
        "id": "early",
    }
    await caller.send_raw(frame(0))
    await caller.wait_for(lambda: len(caller.of("error")) == 2)
    assert caller.of("error")[1] == {
        "type": "error",
        "code": "not_started",
        "message": "audio before session.started is dropped",
        "recoverable": True,
    }
    await caller.start()
    await caller.send({"type": "session.start", "provider": "fake", "model": "m", "id": 2})
    assert (await caller.reply(2))["code"] == "already_started"


async def test_a_failed_start_is_reported_and_may_be_retried(
    start_worker: Any, start_gateway: Any, open_caller: Any
) -> None:
    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    await caller.send(
        {"type": "session.start", "provider": "fake", "model": "reject-key", "id": "a"}
    )
    error = await caller.reply("a")
    assert (error["type"], error["code"]) == ("error", "invalid_api_key")
    assert "sk-" not in error["message"] or "sk-..." in error["message"]
    assert not caller.of("closed")  # events of the failed attempt are not relayed
    await caller.send(
        {"type": "session.start", "provider": "fake", "model": "m", "config": {"temperature": 9}}
    )
    await caller.wait_for(lambda: len(caller.of("error")) == 2)
    assert caller.of("error")[1]["code"] == "invalid_config"
    assert "temperature" in caller.of("error")[1]["message"]
    started = await caller.start(session_id="my-call-1")
    assert started["session_id"] == "my-call-1"


async def test_a_session_ended_elsewhere_closes_the_socket(
    start_worker: Any, start_gateway: Any, open_caller: Any, make_redis: Any
) -> None:
    from ingress import RedisRealtimeClient

    await start_worker()
    gw = await start_gateway()
    caller = await open_caller(gw.url)
    started = await caller.start()
    other = RedisRealtimeClient(
        "redis://fake/0",
        provider="fake",
        model="fake-model",
        namespace="vgtest",
        redis=make_redis(),
    )
    await other.attach(started["session_id"])
    await other.disconnect()
    assert await caller.wait_closed() == (1000, "session ended")
    assert caller.of("closed")
