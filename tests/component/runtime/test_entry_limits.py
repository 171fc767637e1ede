"""Oversized input entries and tool results nobody asked for never reach the provider.

Before: a 5 MB audio entry went to the provider as one append (109 s of audio), a 12 MB one made
the provider close the socket and ended the session, and a tool result for an unknown call id was
forwarded (the provider rejects it). Now the ingress raises ``EntryTooLarge`` naming the limit,
and the worker answers anything over the limits (written by another producer) with an ``error``
event, forwards nothing of it and goes on; a result for a call that was never issued or was
already answered is refused the same way.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol import EntryTooLarge, RealtimeSessionConfig, RealtimeToolResponse
from protocol.keys import Keys
from protocol.streams import EntryLimits, encode_audio

CONFIG = RealtimeSessionConfig(instructions="help")  # input: PCM16 24 kHz, 48000 bytes a second
KEYS = Keys("vgtest")
LIMITS = EntryLimits()
SECOND = 48_000


def frame(n: int) -> bytes:
    return n.to_bytes(2, "little") * 480


async def _call(start_worker: Any, make_client: Any, recorder: Any, tag: str) -> Any:
    await start_worker()
    client = make_client(tag=tag)
    events = recorder(client)
    await client.connect(CONFIG)
    return client, events


async def test_the_ingress_refuses_oversized_entries_naming_the_limit(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any
) -> None:
    client, events = await _call(start_worker, make_client, recorder, "ingress")
    with pytest.raises(EntryTooLarge, match=r"48002 bytes .* limit of 48000 bytes \(1 s of pcm16"):
        client.send_audio(b"\x00" * (SECOND + 2))
    with pytest.raises(EntryTooLarge, match="VOICEGRID_MAX_TOOL_OUTPUT_BYTES"):
        client.send_tool_response(
            [RealtimeToolResponse(call_id="c", output="x" * LIMITS.tool_output_bytes)]
        )
    with pytest.raises(EntryTooLarge, match=r"update_config command of .*VOICEGRID_MAX_COMMAND"):
        await client.update_config({"instructions": "y" * LIMITS.command_bytes})
    with pytest.raises(EntryTooLarge, match="request_response command"):
        client.request_response("z" * LIMITS.command_bytes)
    assert not client._pending  # nothing of them was queued
    client.send_audio(b"\x00" * SECOND)  # exactly the limit is accepted
    client.send_audio(frame(1))
    await events.wait_for(lambda: len(events.of("audio")) == 2)
    assert not events.of("error")


async def test_the_worker_refuses_oversized_entries_from_any_producer_and_goes_on(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    client, events = await _call(start_worker, make_client, recorder, "worker")
    redis = make_redis()
    stream = KEYS.session(client.session_id).input
    big_body = orjson.dumps({"update": {"instructions": "i" * LIMITS.command_bytes}})
    await redis.xadd(stream, encode_audio(b"\x00" * 5_000_000))  # type: ignore[arg-type]
    await redis.xadd(stream, {"v": "1", "ts": "1", "k": "c", "c": "update_config", "b": big_body})
    client.send_audio(frame(2))  # the session goes on
    await events.wait_for(lambda: events.of("audio"))
    errors = events.of("error")
    assert [e.code for e in errors] == ["entry_too_large", "entry_too_large"]
    assert all(e.recoverable for e in errors)
    assert (
        "5000000 bytes" in errors[0].message and "VOICEGRID_MAX_AUDIO_ENTRY_MS" in errors[0].message
    )
    assert "update_config command" in errors[1].message
    assert fakes["worker"][0].frames == [frame(2)]  # never forwarded
    assert client.connected


async def test_tool_results_for_unknown_or_answered_calls_are_refused(
    start_worker: Any, make_client: Any, recorder: Any, fakes: Any, make_redis: Any
) -> None:
    client, events = await _call(start_worker, make_client, recorder, "tools")
    provider = fakes["tools"][0]
    client.send_tool_response([RealtimeToolResponse(call_id="never-issued", output=1)])
    await events.wait_for(lambda: events.of("error"))
    refused = events.of("error")[0]
    assert refused.code == "unknown_tool_call" and "'never-issued'" in refused.message
    client.request_response("call a tool")
    await events.wait_for(lambda: events.of("tool-call"))
    client.send_tool_response([RealtimeToolResponse(call_id="call-1", output="sunny")])
    await events.wait_for(lambda: events.of("response-done"))
    client.send_tool_response([RealtimeToolResponse(call_id="call-1", output="again")])
    await events.wait_for(lambda: len(events.of("error")) == 2)
    assert events.of("error")[1].code == "unknown_tool_call"
    # an oversized result for a real call, written by another producer, is refused too
    client.request_response("call a tool")
    await events.wait_for(lambda: len(events.of("tool-call")) == 2)
    body = {"responses": [{"call_id": "call-1", "output": "o" * LIMITS.tool_output_bytes}]}
    await make_redis().xadd(
        KEYS.session(client.session_id).input,
        {"v": "1", "ts": "1", "k": "c", "c": "tool_response", "b": orjson.dumps(body)},
    )
    await events.wait_for(lambda: len(events.of("error")) == 3)
    assert events.of("error")[2].code == "entry_too_large"
    assert [r.output for r in provider.tool_responses] == ["sunny"]
    assert await client.ping() is True
