"""The Redis pumps every role builds on: one multiplexed reader, one coalescing pipelined writer.

- :class:`StreamReader` issues one blocking ``XREAD`` over many streams (a worker's input streams,
  an ingress's output streams) plus a private wake-up stream, so a stream added meanwhile joins the
  read at once, and hands each consumer its entries in stream order. One reader per process
  instead of one blocking connection per session: redis-py costs 45-70 µs of client CPU per
  command, so per-session reads saturate a process near 500 sessions.
- :class:`PipelineWriter` collects what its sources produced since its last round trip and writes
  it in one pipeline; under load a round trip carries many sessions' data, idle an item goes out at
  once. On a connection error every batch goes back to its source and the round is retried after a
  :class:`~protocol.backoff.Backoff`, so a Redis blip loses nothing. Subclasses say which commands
  a batch becomes and what a reply means: :class:`OutputWriter` (the worker: one fenced
  ``EVALSHA`` per session, :mod:`redisio.lease`) and the ingress's writer (``XADD`` per entry).

Each pump keeps one connection of the client's pool for itself (:class:`PumpConnection`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from protocol.backoff import Backoff
from protocol.keys import Keys
from protocol.streams import entry_id_key

from .connection import (
    REDIS_ERRORS,
    RETRY_REPLIES,
    Entries,
    PipelineLink,
    PumpConnection,
    RedisHealth,
    StreamLink,
)
from .lease import Lease, LeaseScripts, SessionWrite, WriteMode
from .metrics import PROVIDER_TO_OUTPUT_LATENCY, REDIS_COMMAND_LATENCY

__all__ = [
    "DEFAULT_LINGER_S",
    "WRITE_CHUNK",
    "OutputPump",
    "OutputWriter",
    "PipelineWriter",
    "ReaderPump",
    "StreamReader",
    "WriteBatch",
    "WriteSource",
]

log = logging.getLogger("voicegrid.redisio.pumps")

#: Default linger of both pumps (``VOICEGRID_BATCH_LINGER_MS``): the least time between the
#: starts of two reads, or of two write rounds, while data keeps coming. Voice frames are 20 ms
#: apart, so 5 ms batches a quarter of a frame period: at most 200 rounds a second per pump
#: whatever the number of sessions, for at most 5 ms added per hop (docs/streams.md, measured in
#: bench/README.md).
DEFAULT_LINGER_S = 0.005
#: Sessions per fenced write script call: one call holds Redis for about 10 µs per session, so
#: a chunk keeps any single call near a millisecond.
WRITE_CHUNK = 100

Source = TypeVar("Source")
Batch = TypeVar("Batch")


@dataclasses.dataclass(slots=True)
class _Subscription:
    cursor: bytes
    consumer: Callable[[Entries], None]
    on_error: Callable[[ResponseError], None] | None = None


class StreamReader:
    """One blocking ``XREAD`` over many streams (a worker's input streams, an ingress's output
    streams), each delivered to its consumer; a private wake stream lets ``add`` interrupt it."""

    #: longest wait between two attempts while Redis is unreachable
    backoff_cap_s = 2.0

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        health: RedisHealth,
        *,
        count: int = 200,
        block_ms: int = 1000,
        linger_s: float = DEFAULT_LINGER_S,
        wake_key: str | None = None,
        reads: StreamLink | None = None,
    ) -> None:
        self.redis = redis
        self.health = health
        self.count = count
        self.block_ms = block_ms
        self.linger_s = linger_s
        # a cluster bucket's reader (redisio.cluster) brings a wake key in its slot and its reads
        self.wake_key = wake_key or keys.wake(uuid.uuid4().hex)
        self._wake_stream = self.wake_key.encode()
        self._wake_cursor = b"0-0"
        self._subs: dict[bytes, _Subscription] = {}
        self._reads: StreamLink = reads or PumpConnection(redis)
        self._started = 0.0

    async def add(
        self,
        stream: str,
        *,
        after: str,
        consumer: Callable[[Entries], None],
        on_error: Callable[[ResponseError], None] | None = None,
    ) -> None:
        """Start delivering entries of ``stream`` after id ``after`` to ``consumer``.

        ``after`` must be a full stream id (``StreamEntryError`` otherwise). If Redis ever
        rejects reading ``stream`` (e.g. the key holds another type), the stream is dropped from
        the shared read and ``on_error`` gets Redis' error; every other stream keeps flowing.
        """
        entry_id_key(after)  # one position Redis rejects would fail the read of every stream
        self._subs[stream.encode()] = _Subscription(after.encode(), consumer, on_error)
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
        backoff = Backoff(cap=self.backoff_cap_s)
        # start the wake cursor at a concrete id so a wake-up between two reads is not missed
        await self._wake()
        try:
            await self._read_loop(backoff)
        finally:
            await self._reads.close()

    async def _read_loop(self, backoff: Backoff) -> None:
        self._started = asyncio.get_running_loop().time()
        while True:
            await self._read_once(backoff)

    def _streams(self) -> dict[bytes, bytes]:
        """What the next read names: the wake stream and every subscription, at their cursors."""
        streams = {self._wake_stream: self._wake_cursor}
        for key, sub in self._subs.items():
            streams[key] = sub.cursor
        return streams

    async def _read_once(self, backoff: Backoff) -> None:
        """One read: linger, read every stream (blocking while nothing is there), deliver."""
        clock = asyncio.get_running_loop().time
        # linger: the next read starts at least ``linger_s`` after the previous one did, so
        # what arrives meanwhile comes back in one round; a read that blocked (idle) was
        # started long ago, so the next one goes at once
        pause = self._started + self.linger_s - clock()
        if pause > 0:
            await asyncio.sleep(pause)
        streams = self._streams()
        self._started = clock()
        try:
            reply = await self._reads.xread(streams, count=self.count, block_ms=self.block_ms)
        except REDIS_ERRORS as exc:
            self.health.failed(exc)
            log.warning("stream read failed (%s); retrying", type(exc).__name__)
            await backoff.wait()
            return
        except ResponseError as exc:
            log.error("stream read rejected by Redis: %s", exc)
            if not await self._isolate(streams):
                await backoff.wait()
            return
        backoff.reset()
        self.health.ok()
        self._deliver(reply)

    def _deliver(self, reply: list[tuple[bytes, Entries]]) -> bool:
        """Hand each stream's entries to its consumer, in order; True if a subscribed stream
        (not the wake stream) had entries."""
        wake = self._wake_stream
        delivered = False
        for stream, entries in reply:
            if not entries:
                continue
            if stream == wake:
                self._wake_cursor = entries[-1][0]
                continue
            subscription = self._subs.get(stream)
            if subscription is None:
                continue
            delivered = True
            subscription.cursor = entries[-1][0]
            try:
                subscription.consumer(entries)
            except Exception:
                log.exception("session consumer failed on %d entries; skipped", len(entries))
        return delivered

    async def _isolate(self, streams: dict[bytes, bytes]) -> bool:
        """The shared read was rejected: find the streams Redis rejects on their own (one
        non-blocking ``XREAD`` each, in one round trip), drop them and tell their subscribers.
        True if any was found; their entries stay unread, nothing else is lost."""
        keys = list(streams)
        commands = [("XREAD", "COUNT", 1, "STREAMS", key, streams[key]) for key in keys]
        try:
            replies = await self._reads.pipeline(commands)
        except REDIS_ERRORS as exc:
            self.health.failed(exc)
            return False
        found = False
        for key, reply in zip(keys, replies, strict=True):
            if not isinstance(reply, ResponseError):
                continue
            found = True
            if key == self._wake_stream:
                log.error("wake stream %s rejected by Redis (%s); starting it afresh", key, reply)
                self._wake_cursor = b"0-0"
                with contextlib.suppress(*REDIS_ERRORS, ResponseError):
                    await self.redis.delete(key)
                continue
            subscription = self._subs.pop(key, None)
            log.error("stream %s rejected by Redis (%s); no longer read", key.decode(), reply)
            if subscription is not None and subscription.on_error is not None:
                try:
                    subscription.on_error(reply)
                except Exception:
                    log.exception("stream error handler failed")
        return found


class PipelineWriter(abc.ABC, Generic[Source, Batch]):
    """Coalesces what many sources produced into one pipelined round trip at a time.

    A source calls :meth:`mark` when it has something to write; the writer takes its batch
    (:meth:`_take`) at the next round. Subclasses implement :meth:`_take`, :meth:`_restore`,
    :meth:`_commands` and :meth:`_settle`.
    """

    #: the ``REDIS_COMMAND_LATENCY`` label of this writer's round trips
    latency_label = "write"
    #: longest wait between two attempts while Redis is unreachable
    backoff_cap_s = 2.0

    def __init__(
        self,
        redis: Redis,
        health: RedisHealth,
        *,
        linger_s: float = DEFAULT_LINGER_S,
        conn: PipelineLink | None = None,
    ) -> None:
        self.redis = redis
        self.health = health
        self.linger_s = linger_s
        self._dirty: dict[Source, None] = {}
        self._wakeup = asyncio.Event()
        self._round = asyncio.Condition()
        self._in_flight: set[Source] = set()
        # a cluster bucket's writer (redisio.cluster) sends through its node's shared connection
        self._conn: PipelineLink = conn or PumpConnection(redis)

    # --- what a subclass says -------------------------------------------------------------------

    @abc.abstractmethod
    def _take(self, source: Source) -> Batch | None:
        """Everything ``source`` has to write now, or None."""

    @abc.abstractmethod
    def _restore(self, source: Source, batch: Batch) -> None:
        """Give an unwritten ``batch`` back to ``source`` (ahead of anything newer)."""

    @abc.abstractmethod
    def _commands(self, work: list[tuple[Source, Batch]]) -> list[tuple[Any, ...]]:
        """The Redis commands that write every batch of this round, in one pipeline."""

    @abc.abstractmethod
    async def _settle(
        self, work: list[tuple[Source, Batch]], replies: list[Any], done: float
    ) -> list[tuple[Source, Batch]]:
        """Act on the replies to this round's commands (a ``ResponseError`` where one failed);
        returns the batches to write again in the next round."""

    # --- the loop -------------------------------------------------------------------------------

    def mark(self, source: Source) -> None:
        """``source`` has something to write; it is taken at the next round trip."""
        self._dirty[source] = None
        self._wakeup.set()

    async def flush(self, source: Source, *, within_s: float) -> bool:
        """Wait until everything ``source`` produced so far is written (or settled)."""

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
        backoff = Backoff(cap=self.backoff_cap_s)
        clock = asyncio.get_running_loop().time
        started = clock()
        while True:
            await self._wakeup.wait()
            # linger: a round starts at least ``linger_s`` after the previous one did, so what
            # the sessions produce meanwhile shares it; after a quiet spell it goes at once
            pause = started + self.linger_s - clock()
            if pause > 0:
                await asyncio.sleep(pause)
            started = clock()
            self._wakeup.clear()
            dirty = list(self._dirty)
            self._dirty.clear()
            work: list[tuple[Source, Batch]] = []
            for source in dirty:
                batch = self._take(source)
                if batch is not None:
                    work.append((source, batch))
            if not work:
                await self._notify()
                continue
            self._in_flight.update(s for s, _ in work)
            try:
                retry, failed = await self._write(work)
            finally:
                self._in_flight.clear()
            for source, batch in retry:
                self._restore(source, batch)
                self._dirty[source] = None
            if retry:
                self._wakeup.set()
            if not failed:
                backoff.reset()
            await self._notify()
            if failed:
                await backoff.wait()

    async def _notify(self) -> None:
        async with self._round:
            self._round.notify_all()

    async def _write(
        self, work: list[tuple[Source, Batch]]
    ) -> tuple[list[tuple[Source, Batch]], bool]:
        """One pipelined round trip: (the batches to write again, whether Redis was unreachable)."""
        commands = self._commands(work)
        started = time.perf_counter()
        try:
            replies = await self._conn.pipeline(commands)
        except REDIS_ERRORS as exc:
            # the pipeline may have been partly applied: a retry can duplicate a few entries
            # (at-least-once on connection loss), never lose them
            self.health.failed(exc)
            log.warning("%s round failed (%s); retrying", self.latency_label, type(exc).__name__)
            return work, True
        done = time.perf_counter()
        REDIS_COMMAND_LATENCY.labels(self.latency_label).observe(done - started)
        self.health.ok()
        return await self._settle(work, replies, done), False


@dataclasses.dataclass(slots=True)
class WriteBatch:
    """What one session hands the worker's writer for one round trip."""

    entries: list[dict[str, Any]]
    enqueued_at: list[float]
    fields: dict[str, bytes]
    mode: WriteMode = "keep"
    close_ttl_s: float = 0.0


class WriteSource(Protocol):
    """A session as the worker's writer sees it."""

    lease: Lease

    def take_batch(self) -> WriteBatch | None: ...

    def restore_batch(self, batch: WriteBatch) -> None: ...

    def batch_written(self, batch: WriteBatch) -> None: ...

    def batch_fenced(self) -> None: ...


class OutputWriter(PipelineWriter[WriteSource, WriteBatch]):
    """The worker's writer: each round is one fenced write script call per
    :data:`WRITE_CHUNK` sessions, which appends every session's output entries in order and
    updates its record fields, or writes nothing for a session whose lease is no longer the
    writer's (:mod:`redisio.lease`)."""

    latency_label = "write"

    def __init__(
        self,
        redis: Redis,
        scripts: LeaseScripts,
        health: RedisHealth,
        *,
        maxlen: int,
        version: bytes,
        linger_s: float = DEFAULT_LINGER_S,
        conn: PipelineLink | None = None,
    ) -> None:
        super().__init__(redis, health, linger_s=linger_s, conn=conn)
        self.scripts = scripts
        self.maxlen = maxlen
        self.version = version

    def _take(self, source: WriteSource) -> WriteBatch | None:
        return source.take_batch()

    def _restore(self, source: WriteSource, batch: WriteBatch) -> None:
        source.restore_batch(batch)

    def _commands(self, work: list[tuple[WriteSource, WriteBatch]]) -> list[tuple[Any, ...]]:
        pipe = _Commands()
        for start in range(0, len(work), WRITE_CHUNK):
            self.scripts.queue_write(
                pipe,
                [
                    SessionWrite(
                        source.lease, batch.entries, batch.fields, batch.mode, batch.close_ttl_s
                    )
                    for source, batch in work[start : start + WRITE_CHUNK]
                ],
                maxlen=self.maxlen,
                version=self.version,
            )
        return pipe.commands

    async def _settle(
        self, work: list[tuple[WriteSource, WriteBatch]], replies: list[Any], done: float
    ) -> list[tuple[WriteSource, WriteBatch]]:
        retry: list[tuple[WriteSource, WriteBatch]] = []
        latencies: list[float] = []
        for index, reply in enumerate(replies):
            chunk = work[index * WRITE_CHUNK : (index + 1) * WRITE_CHUNK]
            if isinstance(reply, NoScriptError):
                try:
                    await self.scripts.load()  # a restarted or failed-over Redis
                except REDIS_ERRORS as exc:
                    # gone again: the retried round finds NOSCRIPT (or the error) and reloads
                    self.health.failed(exc)
                retry += chunk
                continue
            if isinstance(reply, RETRY_REPLIES):
                retry += chunk  # not run: a cluster slot moving or failing over
                continue
            if isinstance(reply, BaseException):
                log.error("output write of %d sessions rejected by Redis: %s", len(chunk), reply)
                for source, batch in chunk:
                    source.batch_written(batch)
                continue
            for position, (source, batch) in enumerate(chunk):
                if int(reply[2 * position]) < 0:
                    source.batch_fenced()
                    continue
                latencies += batch.enqueued_at
                source.batch_written(batch)
        observe = PROVIDER_TO_OUTPUT_LATENCY.observe
        for queued_at in latencies:
            observe(done - queued_at)
        return retry


class ReaderPump(Protocol):
    """What a session reads through: :class:`StreamReader`, or ``redisio.cluster``'s
    ``ShardedReader`` (a reader per bucket of a Redis Cluster)."""

    async def add(
        self,
        stream: str,
        *,
        after: str,
        consumer: Callable[[Entries], None],
        on_error: Callable[[ResponseError], None] | None = None,
    ) -> None: ...

    def remove(self, stream: str) -> None: ...

    async def run(self) -> None: ...


class OutputPump(Protocol):
    """What a worker's session writes through: :class:`OutputWriter`, or ``redisio.cluster``'s
    ``ShardedWriter`` of them (one per bucket of a Redis Cluster)."""

    def mark(self, source: WriteSource) -> None: ...

    async def flush(self, source: WriteSource, *, within_s: float) -> bool: ...

    async def run(self) -> None: ...


class _Commands:
    """Collects the commands :meth:`LeaseScripts.queue_write` queues, for one round trip."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def evalsha(self, *args: Any) -> None:
        self.commands.append(("EVALSHA", *args))
