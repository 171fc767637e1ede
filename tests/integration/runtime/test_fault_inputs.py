"""Fault suite, input: what any producer may write to a live session's input stream.

Hypothesis-generated malformed entries and commands, oversized entries and a stream Redis refuses
to read, thrown at live sessions on a real ``voicegrid worker``: each is answered with an
``error`` event (or ignored when valid), nothing oversized reaches the provider, the worker logs
no traceback, and the session, and its neighbour on the same worker, go on.
"""

from __future__ import annotations

import asyncio
import string
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st
from redis.asyncio import Redis

from ingress import RedisRealtimeClient
from protocol.keys import Keys
from protocol.streams import EntryLimits
from providers.simulator import OpenAISimulator

from ...support.timing import scaled
from .faultkit import (
    SCRIPT,
    Talker,
    draw,
    json_values,
    numbered_frame,
    record,
    write_entries,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Malformed entries generated per run (CI budget: each is one XADD and at most one event).
EXAMPLES = 150

_json = json_values(max_leaves=12)
_commands = st.sampled_from(
    ["tool_response", "update_config", "request_response", "ping", "nonsense", "", "Ping"]
)
_bodies = st.one_of(
    _json.map(orjson.dumps),
    st.binary(max_size=64),
    st.builds(
        lambda ids: orjson.dumps({"responses": [{"call_id": i, "output": 1} for i in ids]}),
        st.lists(st.text(string.ascii_letters, min_size=1, max_size=12), min_size=1, max_size=3),
    ),
    st.builds(lambda d: orjson.dumps({"update": d}), st.dictionaries(st.text(max_size=10), _json)),
)
_entries = st.one_of(
    # well-formed command envelopes around generated commands and bodies
    st.builds(lambda c, b: {"v": b"1", "ts": b"1", "k": b"c", "c": c, "b": b}, _commands, _bodies),
    # commands with generated bodies (never a valid disconnect: that would end the session)
    st.fixed_dictionaries(
        {"v": st.sampled_from([b"1", b"2", b"", b"x"]), "ts": st.sampled_from([b"1", b"-1", b"z"])},
        optional={"k": st.sampled_from([b"c", b"a", b"q"]), "c": _commands, "b": _bodies},
    ),
    # audio of any length and content, well-formed envelope
    st.builds(lambda data: {"v": b"1", "ts": b"1", "k": b"a", "d": data}, st.binary(max_size=3000)),
    # anything at all
    st.dictionaries(
        st.sampled_from(["v", "ts", "k", "d", "c", "b", "ep", "zz"]),
        st.binary(max_size=40),
        min_size=1,
    ),
)


def _input(client: RedisRealtimeClient) -> str:
    return Keys(client._namespace).session(client.session_id or "").input


async def _sentinel_arrives(sim: Any, client: RedisRealtimeClient, marker: int, seq: int) -> None:
    """Send one numbered frame and wait until the provider has it (searched for anywhere in its
    input: generated audio of any length shifts the frame boundaries)."""
    frame = numbered_frame(marker, seq, speech=False)
    client.send_audio(frame)
    await sim.wait_for(
        lambda s: any(frame in conn.audio_in for conn in s.connections), timeout=scaled(10)
    )


async def test_generated_malformed_entries_never_hurt_a_live_session(
    workers: Any, redis_url: str, namespace: str
) -> None:
    entries = draw(_entries, EXAMPLES)
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        worker = workers("a", sim.url)
        await worker.wait_ready()
        talker = await Talker.connected(redis_url, namespace, 0, talking=False)
        client = talker.client
        await write_entries(redis_url, _input(client), entries)
        await _sentinel_arrives(sim, client, talker.marker, 1)
        assert client.connected and not talker.of("closed")
        assert await client.ping() is True
        errors = talker.of("error")
        codes: dict[str, int] = {}
        for error in errors:
            codes[error.code] = codes.get(error.code, 0) + 1
        log = worker.log_path.read_text()
        record(
            "malformed_input_entries",
            cases=len(entries),
            error_events=len(errors),
            by_code=codes,
            worker_alive=worker.proc.poll() is None,
        )
        assert worker.proc.poll() is None
        assert "Traceback" not in log, log[-3000:]
        assert all(e.recoverable for e in errors), [e for e in errors if not e.recoverable]
        await client.disconnect()


async def test_oversized_entries_are_refused_and_never_reach_the_provider(
    workers: Any, redis_url: str, namespace: str
) -> None:
    limits = EntryLimits()
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        worker = workers("a", sim.url)
        await worker.wait_ready()
        talker = await Talker.connected(redis_url, namespace, 0, talking=False)
        client = talker.client
        big = orjson.dumps({"update": {"instructions": "i" * (2 * limits.command_bytes)}})
        oversized: list[dict[str, Any]] = [
            {"v": b"1", "ts": b"1", "k": b"a", "d": b"\x00" * 5_000_000},
            {"v": b"1", "ts": b"1", "k": b"a", "d": b"\x00" * 12_000_000},
            {"v": b"1", "ts": b"1", "k": b"c", "c": b"update_config", "b": big},
        ]
        await write_entries(redis_url, _input(client), oversized)
        await _sentinel_arrives(sim, client, talker.marker, 1)

        def too_large() -> list[Any]:
            return [e for e in talker.of("error") if e.code == "entry_too_large"]

        async with asyncio.timeout(10):
            while len(too_large()) < len(oversized):  # noqa: ASYNC110 - events, polled
                await asyncio.sleep(0.05)
        largest = max(len(orjson.dumps(f)) for c in sim.connections for f in c.received)
        record(
            "oversized_entries",
            cases=len(oversized),
            refused=len(too_large()),
            largest_provider_event_bytes=largest,
        )
        assert len(too_large()) == len(oversized)
        assert largest < 1024 * 1024  # OpenAI allows 15 MiB per client event
        assert client.connected and worker.proc.poll() is None
        await client.disconnect()


async def test_an_input_stream_redis_refuses_ends_that_session_only(
    workers: Any, redis_url: str, namespace: str
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        worker = workers("a", sim.url)
        await worker.wait_ready()
        broken_talker = await Talker.connected(redis_url, namespace, 0, talking=False)
        healthy_talker = await Talker.connected(redis_url, namespace, 1, talking=False)
        broken, healthy = broken_talker.client, healthy_talker.client
        await _sentinel_arrives(sim, healthy, healthy_talker.marker, 1)
        redis = Redis.from_url(redis_url)
        try:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(_input(broken))
                pipe.set(_input(broken), "not a stream")  # what a stray client could do
                await pipe.execute()
        finally:
            await redis.aclose()
        await broken_talker.at("closed", within=10)
        errors = broken_talker.of("error")
        assert errors and errors[-1].code == "input_rejected" and not errors[-1].recoverable
        for seq in range(2, 12):  # the neighbour on the same worker keeps flowing
            await _sentinel_arrives(sim, healthy, healthy_talker.marker, seq)
        record("input_stream_refused", neighbour_frames_after=10, worker_alive=True)
        assert worker.proc.poll() is None and healthy.connected
        await healthy.disconnect()
