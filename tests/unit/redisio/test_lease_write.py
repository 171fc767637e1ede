"""``redisio.lease.WRITE``: one script call writes many sessions, each fenced by its own lease.

Run against fakeredis (Lua) and, when ``REDIS_URL`` is set, against the real Redis: the compact
audio layout must produce exactly the entries the generic layout produces, field for field.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import fakeredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from protocol.events import AudioEvent, ConnectionEvent
from protocol.keys import Keys
from protocol.streams import SCHEMA_VERSION, decode_output, encode_event
from redisio.connection import RedisHealth
from redisio.lease import Lease, LeaseScripts, SessionWrite
from redisio.pumps import OutputWriter, WriteBatch

from ...support.timing import scaled

VERSION = str(SCHEMA_VERSION).encode()


class _Pipe:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def evalsha(self, *args: Any) -> None:
        self.commands.append(("EVALSHA", *args))


async def _lease(redis: Redis, keys: Keys, epoch: int) -> Lease:
    sid = uuid.uuid4().hex
    session = keys.session(sid)
    lease = Lease(keys=session, epoch=epoch, worker_id="w1", ttl_s=5.0)
    await redis.set(session.lease, lease.token, px=5000)
    await redis.hset(session.state, mapping={"status": "live"})
    return lease


async def _write(redis: Redis, writes: list[SessionWrite]) -> list[Any]:
    scripts = LeaseScripts(redis)
    await scripts.load()
    pipe = _Pipe()
    scripts.queue_write(pipe, writes, maxlen=500, version=VERSION)
    (command,) = pipe.commands
    reply: list[Any] = await redis.execute_command(*command)
    return reply


async def test_many_sessions_one_call_each_fenced_alone(redis: Redis) -> None:
    keys = Keys(f"t-{uuid.uuid4().hex[:8]}")
    mine, stolen, closing = [await _lease(redis, keys, 3) for _ in range(3)]
    await redis.set(stolen.keys.lease, "4:other", px=5000)  # another worker took it over
    audio = AudioEvent(data=bytes(range(256)) * 3, sample_rate=24000, response_id="r1")
    plain = AudioEvent(data=b"\x01\x02", sample_rate=16000)
    event = ConnectionEvent(reason="connected")
    try:
        reply = await _write(
            redis,
            [
                SessionWrite(
                    mine,
                    [
                        encode_event("audio", audio, epoch=3, ts_us=11),
                        encode_event("connected", event, epoch=3, ts_us=12),
                        encode_event("audio", plain, epoch=3, ts_us=13),
                    ],
                    {"cursor": b"1-1", "open_resp": b"r1"},
                ),
                SessionWrite(stolen, [encode_event("audio", audio, epoch=3)], {"cursor": b"9-9"}),
                SessionWrite(closing, [], {"status": b"closed"}, mode="close", close_ttl_s=30),
            ],
        )
        assert [int(x) if isinstance(x, int) else x for x in reply[0::2]] == [3, -1, 0]
        # the fenced session: nothing written at all
        assert await redis.xlen(stolen.keys.output) == 0
        assert await redis.hget(stolen.keys.state, "cursor") is None
        # the written one: record fields and entries in order, decoded as the ingress does
        assert await redis.hget(mine.keys.state, "cursor") == b"1-1"
        entries = await redis.xrange(mine.keys.output)
        assert reply[1] == entries[-1][0]
        decoded = [decode_output(fields) for _, fields in entries]
        assert [e.payload for e in decoded] == [audio, event, plain]  # type: ignore[union-attr]
        assert [e.epoch for e in decoded] == [3, 3, 3]
        # the compact audio layout writes exactly the fields the generic one would
        assert entries[0][1] == {
            b"v": VERSION,
            b"ts": b"11",
            b"ep": b"3",
            b"k": b"e",
            b"e": b"audio",
            b"d": audio.data,
            b"sr": b"24000",
            b"rid": b"r1",
        }
        assert b"rid" not in entries[2][1]
        # close: lease gone, keys expire
        assert await redis.exists(closing.keys.lease) == 0
        assert 0 < await redis.pttl(closing.keys.state) <= 30_000
    finally:
        for lease in (mine, stolen, closing):
            k = lease.keys
            await redis.delete(k.lease, k.output, k.state, k.input)


class _Source:
    """A session as the writer sees it, with one entry to write."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.pending: WriteBatch | None = WriteBatch(
            [encode_event("connected", ConnectionEvent(), epoch=lease.epoch)], [0.0], {}
        )
        self.written = 0

    def take_batch(self) -> WriteBatch | None:
        batch, self.pending = self.pending, None
        return batch

    def restore_batch(self, batch: WriteBatch) -> None:
        self.pending = batch

    def batch_written(self, batch: WriteBatch) -> None:
        self.written += 1

    def batch_fenced(self) -> None:
        raise AssertionError("not fenced")


async def test_the_writer_outlives_a_script_reload_that_finds_redis_gone() -> None:
    """NOSCRIPT (Redis restarted) makes the writer reload its scripts; when Redis is gone again
    at that moment the writer must retry later, not die with every session's output."""
    redis: Redis = fakeredis.FakeAsyncRedis()
    keys = Keys(f"t-{uuid.uuid4().hex[:8]}")
    lease = await _lease(redis, keys, 1)
    scripts = LeaseScripts(redis)  # never loaded: the first write gets NOSCRIPT
    real_load = scripts.load
    failures = [RedisConnectionError("gone")]

    async def flaky_load() -> None:
        if failures:
            raise failures.pop()
        await real_load()

    scripts.load = flaky_load  # type: ignore[method-assign]
    writer = OutputWriter(redis, scripts, RedisHealth(), maxlen=500, version=VERSION)
    task = asyncio.create_task(writer.run())
    source = _Source(lease)
    try:
        writer.mark(source)
        async with asyncio.timeout(scaled(5)):
            while not source.written:
                assert not task.done(), task
                await asyncio.sleep(0.01)
        assert await redis.xlen(lease.keys.output) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
