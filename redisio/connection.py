"""Opening Redis and holding connections: what every voicegrid process needs to talk to Redis.

- :func:`open_redis`: the client for a ``redis://`` / ``rediss://`` / ``unix://`` URL (arq-capable,
  JSON job payloads, hiredis command packing).
- :class:`PumpConnection`: one connection held by one pump (a reader's blocking ``XREAD``s, a
  writer's pipelined rounds).
- :class:`RedisHealth`: when Redis last answered (``/readyz``).
- :data:`REDIS_ERRORS`: the errors that mean "Redis is unreachable right now" (retried).
- :data:`RETRY_REPLIES`: error replies that mean "not done, try again" on a Redis Cluster (a slot
  moving or failing over), so a pump writes that batch again instead of dropping it.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .resp import fast_packing
from .settings import SENTINEL_SCHEMES, sentinel_target

__all__ = [
    "REDIS_ERRORS",
    "RETRY_REPLIES",
    "Entries",
    "PipelineLink",
    "PumpConnection",
    "RedisHealth",
    "StreamLink",
    "open_redis",
]

#: One stream's entries as Redis returns them: (entry id, {field: value}).
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def open_redis(url: str, *, queue: str) -> ArqRedis:
    """An arq-capable Redis client for ``url`` (``redis://``, ``rediss://`` with TLS,
    ``unix://``; password and db number in the URL; or ``redis+sentinel://``: the primary that
    Redis Sentinel names, found again after a failover). Job payloads are JSON (orjson), not
    arq's default pickle, so a job read from Redis can never execute code."""
    options: dict[str, Any] = {"socket_connect_timeout": 5.0, "health_check_interval": 10}
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only; unix sockets reject the option
    pool: ConnectionPool
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        pool = _sentinel_pool(url, options)
    else:
        pool = ConnectionPool.from_url(url, **options)
    # same connection kind (TCP, TLS, unix socket), with linear-time command packing
    pool.connection_class = fast_packing(pool.connection_class)
    return ArqRedis(
        pool,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        default_queue_name=queue,
    )


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel-managed pool, which also closes its connections to the Sentinels
    when it is closed (each client opens its own)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.connection_pool.disconnect()


def _sentinel_pool(url: str, options: dict[str, Any]) -> ConnectionPool:
    """The pool of a ``redis+sentinel://`` URL: each new connection asks the Sentinels for the
    service's primary (``SENTINEL get-master-addr-by-name``) and checks that it is one; a
    connection to a primary that was demoted fails (``READONLY``), and the pumps' next
    connection finds the new primary."""
    target = sentinel_target(url)
    node = {**options, "db": target.db, "username": target.username, "password": target.password}
    if target.ssl:
        node["ssl"] = True
    ask = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_keepalive": True,
        "password": target.sentinel_password,
        "ssl": target.ssl,
    }
    sentinels = Sentinel(list(target.sentinels), sentinel_kwargs=ask, **node)  # type: ignore[no-untyped-call]
    return _SentinelPool(target.service, sentinels, check_connection=True, **node)  # type: ignore[no-untyped-call]


#: Errors that mean "Redis is unreachable right now": retried, never fatal to a session.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
#: Error replies of a Redis Cluster that mean the command was not run and may be sent again: a
#: slot mid-migration (``TRYAGAIN``, or a redirection the pump could not follow) or a shard
#: failing over (``CLUSTERDOWN``).
RETRY_REPLIES: tuple[type[BaseException], ...] = (
    TryAgainError,
    ClusterDownError,
    MovedError,
    AskError,
)


class PipelineLink(Protocol):
    """What a writer pump sends its rounds through (:class:`PumpConnection`, or a cluster
    node's shared connection, ``redisio.cluster``)."""

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]: ...

    async def close(self) -> None: ...


class StreamLink(Protocol):
    """What a reader pump reads with (:class:`PumpConnection`, or a cluster bucket's reads)."""

    async def xread(
        self, streams: dict[bytes, bytes], *, count: int, block_ms: int
    ) -> list[tuple[bytes, Entries]]: ...

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]: ...

    async def close(self) -> None: ...


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
