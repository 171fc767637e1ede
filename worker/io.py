"""The worker's two Redis pumps: one multiplexed input reader, one coalescing output writer.

- :class:`InputReader` issues one blocking ``XREAD`` over the input streams of every session the
  worker owns (plus a private wake-up stream, so a new session joins the read at once), and
  hands each session its entries in stream order. One reader per worker instead of one blocking
  connection per session: redis-py costs 45-70 µs of client CPU per command, so per-session
  reads saturate a worker near 500 sessions.
- :class:`OutputWriter` collects what sessions produced since its last round trip and writes it
  in one pipeline: per session one fenced ``EVALSHA`` (:mod:`worker.lease`) appending its
  entries in order and updating its record fields. Under load a round trip carries many
  sessions' events; idle, an event goes out at once.

Each pump keeps one connection of the client's pool for itself (:class:`PumpConnection`, also
used by the ingress's pumps): no pool round trip and no redis-py pipeline bookkeeping per round.
Both retry Redis connection errors with a capped backoff and keep the data (the reader its
cursors, the writer its unwritten batches), so a Redis blip does not lose a session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol.keys import Keys

from .lease import Lease, LeaseScripts, WriteMode
from .metrics import PROVIDER_TO_OUTPUT_LATENCY, REDIS_COMMAND_LATENCY

__all__ = [
    "REDIS_ERRORS",
    "Backoff",
    "InputReader",
    "OutputWriter",
    "PumpConnection",
    "RedisHealth",
    "WriteBatch",
    "WriteSource",
]

log = logging.getLogger("voicegrid.worker.io")

#: Errors that mean "Redis is unreachable right now": retried, never fatal to a session.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

Entries = list[tuple[bytes, dict[bytes, bytes]]]


class RedisHealth:
    """When Redis last answered; ``/readyz`` reports not ready when it has been too long."""

    def __init__(self) -> None:
        self.ok_at = time.monotonic()
        self.last_error = ""

    def ok(self) -> None:
        self.ok_at = time.monotonic()
        self.last_error = ""

    def failed(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__

    def reachable(self, within_s: float = 5.0) -> bool:
        return time.monotonic() - self.ok_at < within_s


class Backoff:
    """Capped exponential backoff for Redis reconnects."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.cap, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first


class PumpConnection:
    """A connection kept by one pump (a reader's blocking ``XREAD``s, a writer's rounds).

    Each redis-py call takes a connection from the pool (a lock, a readiness probe, a release),
    and a pipeline adds per-command bookkeeping and reply callbacks: about 50 µs of CPU per
    round trip on top of the ~35 µs the round trip itself costs, and a pump makes a round trip
    per arriving frame when the worker is not loaded (bench/README.md). A pump keeps one
    connection from the same pool (same URL, TLS, password, db) instead. A connection that
    failed or was interrupted mid-command may hold a late reply, so it is disconnected and
    given back, never reused; the next call takes a fresh one.
    """

    def __init__(self, redis: Redis) -> None:
        self.pool = redis.connection_pool
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self.pool.get_connection()
        return self._conn

    async def _drop(self, conn: Any) -> None:
        self._conn = None
        await conn.disconnect(nowait=True)
        await self.pool.release(conn)

    async def xread(
        self, streams: dict[bytes, bytes], *, count: int, block_ms: int
    ) -> list[tuple[bytes, Entries]]:
        """``XREAD COUNT count BLOCK block_ms STREAMS ...``: per stream with news, its entries."""
        conn = await self._connection()
        args: list[Any] = ["XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS"]
        args += streams.keys()
        args += streams.values()
        try:
            await conn.send_command(*args)
            reply = await conn.read_response()
        except BaseException:
            await self._drop(conn)
            raise
        return _stream_reply(reply)

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write; each one's reply, or the ``ResponseError`` it got.

        Connection errors raise (the commands may have been partly applied).
        """
        conn = await self._connection()
        replies: list[Any] = []
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await self._drop(conn)
            raise
        return replies

    async def close(self) -> None:
        """Give the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)


def _stream_reply(reply: Any) -> list[tuple[bytes, Entries]]:
    """An ``XREAD`` reply (RESP2 list or RESP3 map; nil on timeout) as (stream, entries)."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[tuple[bytes, Entries]] = []
    for stream, raw_entries in pairs:
        entries: Entries = []
        for entry_id, flat in raw_entries:
            # fields alternate name, value; a trimmed entry can come back without fields
            it = iter(flat or ())
            entries.append((entry_id, dict(zip(it, it, strict=False))))
        out.append((stream, entries))
    return out


@dataclasses.dataclass(slots=True)
class _Subscription:
    cursor: bytes
    consumer: Callable[[Entries], None]


class InputReader:
    """One blocking ``XREAD`` over many streams (a worker's input streams, an ingress's output
    streams), each delivered to its consumer; a private wake stream lets ``add`` interrupt it."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        health: RedisHealth,
        *,
        count: int = 200,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.health = health
        self.count = count
        self.block_ms = block_ms
        self.wake_key = keys.wake(uuid.uuid4().hex)
        self._wake_cursor = b"0-0"
        self._subs: dict[bytes, _Subscription] = {}
        self._reads = PumpConnection(redis)

    async def add(self, stream: str, *, after: str, consumer: Callable[[Entries], None]) -> None:
        """Start delivering entries of ``stream`` after id ``after`` to ``consumer``."""
        self._subs[stream.encode()] = _Subscription(after.encode(), consumer)
        await self._wake()

    def remove(self, stream: str) -> None:
        """Stop delivering ``stream`` (takes effect at the next read at the latest)."""
        self._subs.pop(stream.encode(), None)

    async def _wake(self) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": b"1"}, maxlen=1, approximate=False)
                pipe.pexpire(self.wake_key, 60_000)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            # the read loop retries on its own; the new stream joins at its next read
            self.health.failed(exc)

    async def run(self) -> None:
        """Read until cancelled."""
        backoff = Backoff()
        # start the wake cursor at a concrete id so a wake-up between two reads is not missed
        await self._wake()
        try:
            await self._read_loop(backoff)
        finally:
            await self._reads.close()

    async def _read_loop(self, backoff: Backoff) -> None:
        wake = self.wake_key.encode()
        while True:
            streams = {wake: self._wake_cursor}
            for key, sub in self._subs.items():
                streams[key] = sub.cursor
            try:
                reply = await self._reads.xread(streams, count=self.count, block_ms=self.block_ms)
            except REDIS_ERRORS as exc:
                self.health.failed(exc)
                log.warning("input read failed (%s); retrying", type(exc).__name__)
                await backoff.wait()
                continue
            except ResponseError as exc:
                log.error("input read rejected by Redis: %s", exc)
                await backoff.wait()
                continue
            backoff.reset()
            self.health.ok()
            for stream, entries in reply:
                if not entries:
                    continue
                if stream == wake:
                    self._wake_cursor = entries[-1][0]
                    continue
                subscription = self._subs.get(stream)
                if subscription is None:
                    continue
                subscription.cursor = entries[-1][0]
                try:
                    subscription.consumer(entries)
                except Exception:
                    log.exception("session consumer failed on %d entries; skipped", len(entries))


@dataclasses.dataclass(slots=True)
class WriteBatch:
    """What one session hands the writer for one round trip."""

    entries: list[dict[str, Any]]
    enqueued_at: list[float]
    fields: dict[str, bytes]
    mode: WriteMode = "keep"
    close_ttl_s: float = 0.0


class WriteSource(Protocol):
    """A session as the writer sees it."""

    lease: Lease

    def take_batch(self) -> WriteBatch | None: ...

    def restore_batch(self, batch: WriteBatch) -> None: ...

    def batch_written(self, batch: WriteBatch) -> None: ...

    def batch_fenced(self) -> None: ...


class OutputWriter:
    """Coalesces every session's pending output into one pipelined round trip."""

    def __init__(
        self, redis: Redis, scripts: LeaseScripts, health: RedisHealth, *, maxlen: int
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.health = health
        self.maxlen = maxlen
        self._dirty: dict[WriteSource, None] = {}
        self._wakeup = asyncio.Event()
        self._round = asyncio.Condition()
        self._in_flight: set[WriteSource] = set()
        self._conn = PumpConnection(redis)

    def mark(self, source: WriteSource) -> None:
        """``source`` has something to write; it is taken at the next round trip."""
        self._dirty[source] = None
        self._wakeup.set()

    async def flush(self, source: WriteSource, *, within_s: float) -> bool:
        """Wait until everything ``source`` produced so far is written (or fenced)."""

        def settled() -> bool:
            return source not in self._dirty and source not in self._in_flight

        async with self._round:
            try:
                await asyncio.wait_for(self._round.wait_for(settled), within_s)
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        """Write until cancelled."""
        try:
            await self._rounds()
        finally:
            await self._conn.close()

    async def _rounds(self) -> None:
        backoff = Backoff()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            dirty = list(self._dirty)
            self._dirty.clear()
            work: list[tuple[WriteSource, WriteBatch]] = []
            for source in dirty:
                batch = source.take_batch()
                if batch is not None:
                    work.append((source, batch))
            if not work:
                await self._notify()
                continue
            self._in_flight.update(s for s, _ in work)
            try:
                failed = await self._write(work)
            finally:
                self._in_flight.clear()
            if failed:
                backoff_needed = True
                for source, batch in failed:
                    source.restore_batch(batch)
                    self._dirty[source] = None
                self._wakeup.set()
            else:
                backoff_needed = False
                backoff.reset()
            await self._notify()
            if backoff_needed:
                await backoff.wait()

    async def _notify(self) -> None:
        async with self._round:
            self._round.notify_all()

    async def _write(
        self, work: list[tuple[WriteSource, WriteBatch]]
    ) -> list[tuple[WriteSource, WriteBatch]]:
        """One pipelined round trip; returns the batches to retry."""
        pipe = _Commands()
        for source, batch in work:
            self.scripts.queue_write(
                pipe,
                source.lease,
                entries=batch.entries,
                fields=batch.fields,
                maxlen=self.maxlen,
                mode=batch.mode,
                close_ttl_s=batch.close_ttl_s,
            )
        started = time.perf_counter()
        try:
            replies = await self._conn.pipeline(pipe.commands)
        except REDIS_ERRORS as exc:
            # the pipeline may have been partly applied: a retry can duplicate a few entries
            # (at-least-once on connection loss), never lose them
            self.health.failed(exc)
            log.warning("output write failed (%s); retrying", type(exc).__name__)
            return work
        done = time.perf_counter()
        REDIS_COMMAND_LATENCY.labels("write").observe(done - started)
        self.health.ok()
        retry: list[tuple[WriteSource, WriteBatch]] = []
        for (source, batch), reply in zip(work, replies, strict=True):
            if isinstance(reply, NoScriptError):
                await self.scripts.load()
                retry.append((source, batch))
            elif isinstance(reply, BaseException):
                log.error("output write for one session rejected by Redis: %s", reply)
                source.batch_written(batch)
            elif int(reply[0]) < 0:
                source.batch_fenced()
            else:
                for queued_at in batch.enqueued_at:
                    PROVIDER_TO_OUTPUT_LATENCY.observe(done - queued_at)
                source.batch_written(batch)
        return retry


class _Commands:
    """Collects the commands :meth:`LeaseScripts.queue_write` queues, for one round trip."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def evalsha(self, *args: Any) -> None:
        self.commands.append(("EVALSHA", *args))
