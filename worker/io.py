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


@dataclasses.dataclass(slots=True)
class _Subscription:
    cursor: bytes
    consumer: Callable[[Entries], None]


class InputReader:
    """One blocking ``XREAD`` over every owned session's input stream."""

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
        while True:
            streams: dict[Any, Any] = {self.wake_key: self._wake_cursor}
            for key, sub in self._subs.items():
                streams[key] = sub.cursor
            try:
                reply = await self.redis.xread(streams, count=self.count, block=self.block_ms)
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
            for stream, entries in reply or ():
                if not entries:
                    continue
                if stream == self.wake_key.encode():
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
        pipe = self.redis.pipeline(transaction=False)
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
            replies = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            # the pipeline may have been partly applied: a retry can duplicate a few entries
            # (at-least-once on connection loss), never lose them
            self.health.failed(exc)
            log.warning("output write failed (%s); retrying", type(exc).__name__)
            return work
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
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
