"""Malformed entries, capacity and admission, attach from a second ingress client."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from protocol import RealtimeSessionConfig, SessionTimeout
from protocol.keys import Keys
from protocol.streams import encode_event

from ...support.timing import scaled

CONFIG = RealtimeSessionConfig()
KEYS = Keys("vgtest")


async def test_malformed_input_entries_become_error_events_and_the_session_goes_on(
    start_worker: Any, make_client: Any, make_redis: Any, recorder: Any, fakes: Any
) -> None:
    await start_worker()
    client = make_client(tag="malformed")
    events = recorder(client)
    await client.connect(CONFIG)
    keys = KEYS.session(client.session_id)
    redis = make_redis()
    bad_entries: list[dict[str, Any]] = [
        {"k": "a", "d": b"\x00\x00"},  # no version
        {"v": "9", "ts": "1", "k": "a", "d": b"\x00\x00"},  # unknown version
        {"v": "1", "ts": "1", "k": "x"},  # unknown kind
        {"v": "1", "ts": "x", "k": "a", "d": b"\x00\x00"},  # bad timestamp
        {"v": "1", "ts": "1", "k": "c", "c": "explode", "b": b"{}"},  # unknown command
        {"v": "1", "ts": "1", "k": "c", "c": "tool_response", "b": b"{not json"},
        {"v": "1", "ts": "1", "k": "c", "c": "tool_response", "b": orjson.dumps({"responses": []})},
        {"v": "1", "ts": "1", "k": "a", "d": b"\x00\x00\x00"},  # odd PCM16 byte count
    ]
    for fields in bad_entries:
        await redis.xadd(keys.input, fields)
    client.send_audio(b"\x05\x00" * 4)
    await events.wait_for(lambda: events.of("audio"))
    errors = events.of("error")
    assert len(errors) == len(bad_entries)
    assert [e.code for e in errors] == ["malformed_entry"] * 7 + ["invalid_audio"]
    assert all(e.recoverable for e in errors)
    assert "field 'v'" in errors[0].message and "field 'c'" in errors[4].message
    assert "responses" in errors[6].message
    assert fakes["malformed"][0].frames == [b"\x05\x00" * 4]  # only the good frame arrived
    assert client.connected


async def test_malformed_output_entry_is_reported_by_the_ingress(
    start_worker: Any, make_client: Any, make_redis: Any, recorder: Any
) -> None:
    await start_worker()
    client = make_client()
    events = recorder(client)
    await client.connect(CONFIG)
    keys = KEYS.session(client.session_id)
    await make_redis().xadd(keys.output, {"v": "1", "ts": "1", "ep": "1", "k": "e", "e": "nope"})
    client.send_audio(b"\x01\x00")
    await events.wait_for(lambda: events.of("audio"))
    assert [e.code for e in events.of("error")] == ["malformed_entry"]


async def test_a_full_worker_takes_no_more_sessions(start_worker: Any, make_client: Any) -> None:
    first = await start_worker(max_sessions=2)
    clients = [make_client() for _ in range(3)]
    await clients[0].connect(CONFIG)
    await clients[1].connect(CONFIG)
    assert len(first.runtime.sessions) == 2
    assert first.http_status("/readyz")[0] == 503  # full
    third = asyncio.create_task(clients[2].connect(CONFIG))
    second = await start_worker(max_sessions=2)
    await asyncio.wait_for(third, scaled(5))
    assert clients[2].session_id in second.runtime.sessions
    assert set(first.runtime.sessions) == {clients[0].session_id, clients[1].session_id}


async def test_connect_times_out_when_no_worker_has_room(
    start_worker: Any, make_client: Any, make_redis: Any
) -> None:
    await start_worker(max_sessions=1)
    await make_client().connect(CONFIG)
    late = make_client()
    late._connect_timeout_s = scaled(0.5)
    try:
        await late.connect(CONFIG)
    except SessionTimeout as exc:
        assert "no worker connected" in str(exc)
    else:
        raise AssertionError("connect should have timed out")
    keys = KEYS.session(late.session_id)
    assert await make_redis().hget(keys.state, "status") == b"closed"


async def test_attach_from_a_second_ingress_client(
    start_worker: Any, make_client: Any, recorder: Any
) -> None:
    await start_worker()
    first = make_client()
    first_events = recorder(first)
    await first.connect(CONFIG)
    first.send_audio(b"\x01\x00" * 2)
    await first_events.wait_for(lambda: len(first_events.of("audio")) == 1)
    resume_after = first.last_event_id
    first.send_audio(b"\x02\x00" * 2)
    await first_events.wait_for(lambda: len(first_events.of("audio")) == 2)

    # another process continues the session from an event id it saw
    second = make_client()
    second_events = recorder(second)
    await second.attach(first.session_id, after=resume_after)
    assert second.connected and second.session_id == first.session_id
    await second_events.wait_for(lambda: len(second_events.of("audio")) == 1)
    assert second_events.of("audio")[0].data == b"\x02\x00" * 2

    # after=None: only new events; both clients see the second client's audio
    third = make_client()
    third_events = recorder(third)
    await third.attach(first.session_id)
    second.send_audio(b"\x03\x00" * 2)
    for rec in (first_events, second_events, third_events):
        await rec.wait_for(lambda rec=rec: any(a.data == b"\x03\x00" * 2 for a in rec.of("audio")))
    assert [a.data for a in third_events.of("audio")] == [b"\x03\x00" * 2]

    await second.disconnect()
    await first_events.wait_for(lambda: first_events.of("closed"))
    await third_events.wait_for(lambda: third_events.of("closed"))
    assert not first.connected and not third.connected


async def test_output_entries_carry_version_timestamp_and_epoch(
    start_worker: Any, make_client: Any, make_redis: Any, recorder: Any
) -> None:
    await start_worker()
    client = make_client()
    events = recorder(client)
    await client.connect(CONFIG)
    client.send_audio(b"\x01\x00" * 2)
    await events.wait_for(lambda: events.of("audio"))
    entries = await make_redis().xrange(KEYS.session(client.session_id).output)
    assert entries
    for _, fields in entries:
        assert fields[b"v"] == b"1" and int(fields[b"ts"]) > 0 and fields[b"ep"] == b"1"
    audio = [f for _, f in entries if f.get(b"e") == b"audio"]
    assert audio[0][b"d"] == b"\x01\x00" * 2  # raw bytes, no base64 or JSON around them
    encoded = encode_event("audio", events.of("audio")[0], epoch=1)
    assert {name.encode() for name in encoded} == set(audio[0])
