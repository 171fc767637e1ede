"""Redis Cluster: the session streams sharded over a cluster, the queue on its own Redis.

A deployment chooses by ``REDIS_URL`` (``docs/streams.md``, "Two layouts"):

- ``redis://`` / ``rediss://`` / ``unix://``: one Redis holds everything, session keys are tagged
  ``{<sid>}`` (the single-node layout, unchanged).
- ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` with TLS): the session keys
  live on a Redis Cluster, tagged by *bucket* (``protocol.keys``, ``VOICEGRID_CLUSTER_BUCKETS``),
  and the arq queue plus the keys that span sessions (``<ns>:live``, ``<ns>:create``) on the
  single-node Redis of ``VOICEGRID_QUEUE_URL`` (arq runs multi-key transactions over its keys).

:func:`open_stores` opens both (:class:`RedisStores`). redis-py's asyncio ``RedisCluster`` keeps
the slot map, follows ``MOVED``/``ASK`` for single commands and re-discovers the cluster after a
failover; the pumps add what it lacks for their hot paths:

- :class:`NodeMux`: one connection per node and pump, shared by the pump's buckets on that node;
  what they submit while a round trip is in flight (or within the linger) goes out in one
  pipeline, so a process makes one round trip per node per round, not one per bucket (a round
  trip costs Redis ~25 µs of CPU, a command in a pipeline ~1 µs: docs/decisions.md).
- :class:`ClusterRouter`: sends one bucket's commands to the node that owns its slot, follows
  ``MOVED`` (refreshing the slot map) and ``ASK`` (``ASKING`` on the importing node) per command,
  and isolates nodes: an unreachable node fails only the buckets it owns.
- :class:`ShardedReader` / :class:`ShardedWriter`: a pump per bucket (a *lane*: the usual
  :class:`~redisio.pumps.StreamReader` or :class:`~redisio.pumps.PipelineWriter`, one slot, its
  own order and backoff) over the routers. A reader lane reads through the node's mux while
  entries keep coming and blocks on a connection of its own once its bucket went quiet, so an
  idle process costs Redis nothing and the first entry after a pause is not delayed.
- :class:`GroupedPipelines`: the renewer's and reaper's pipelines, one round trip per node, a
  failed node failing only its own sessions' commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from arq.connections import ArqRedis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from protocol.backoff import Backoff
from protocol.errors import ConfigError
from protocol.keys import Keys, key_slot

from .connection import (
    REDIS_ERRORS,
    RETRY_REPLIES,
    Entries,
    PumpConnection,
    RedisHealth,
    _stream_reply,
    open_redis,
)
from .pumps import DEFAULT_LINGER_S, PipelineWriter, StreamReader
from .resp import fast_packing
from .settings import CLUSTER_SCHEMES, CommonSettings, redact_url

__all__ = [
    "ClusterRouter",
    "GroupedPipelines",
    "NodeMux",
    "RedisStores",
    "ShardedReader",
    "ShardedWriter",
    "check_stores",
    "hash_tag",
    "open_cluster",
    "open_stores",
]

log = logging.getLogger("voicegrid.redisio.cluster")

Command = tuple[Any, ...]
#: Least seconds between two re-discoveries of the slot map (many buckets fail at once).
REFRESH_INTERVAL_S = 0.25
#: Redirections one bucket's commands follow in one call before the error is its reply.
MAX_REDIRECTS = 3
#: How long a reader lane waits before reading a bucket again that is mid-migration.
TRYAGAIN_PAUSE_S = 0.02
#: How long a reader lane keeps reading through its node's shared rounds after its bucket's last
#: entry before it blocks on a connection of its own. Several frame periods: a bucket holding a
#: session or two sees an entry every 20 ms, and a lane that blocked between two of them made a
#: round trip of its own per frame (at 20 sessions the cluster's worker and ingress spent 1.6x
#: and 2.5x the CPU of the single-node layout; bench/README.md, "Sharding").
QUIET_S = 0.1
#: Longest wait of a bucket's pump between attempts while its node is unreachable: a shard's
#: replica takes over within seconds, and a lane retrying a dead node costs little.
LANE_BACKOFF_CAP_S = 0.25
#: What fails one group of :class:`GroupedPipelines` (the others go on).
_FAILED: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError)
#: What finding a bucket's node can fail with (the lane's own read then meets it and backs off).
_UNROUTABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, RedisClusterException)
#: Seconds to connect to one node: a dead node must not hold a pump for long.
NODE_CONNECT_TIMEOUT_S = 2.0
#: Seconds a pump waits for a node's reply (on top of a blocking read's own block time).
NODE_REPLY_TIMEOUT_S = 10.0


def hash_tag(key: str | bytes) -> str:
    """The hash tag of ``key`` (between the first ``{`` and the next ``}``), or ``""``."""
    text = key.decode() if isinstance(key, bytes) else key
    start = text.find("{")
    end = text.find("}", start + 1) if start >= 0 else -1
    return text[start + 1 : end] if end > start + 1 else ""


# --- opening --------------------------------------------------------------------------------


def _cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes and connection options of a ``redis+cluster://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ConfigError(
            f"{redact_url(url)!r} is not a Redis Cluster URL; expected "
            "redis+cluster://host:port[,host:port...] or rediss+cluster://"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"REDIS_URL={redact_url(url)!r}: node {item!r} is not host:port; expected "
                "redis+cluster://host:port[,host:port...]"
            )
        nodes.append((host.strip("[]"), int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ConfigError(
            f"REDIS_URL={redact_url(url)!r} names database {parts.path!r}; a Redis Cluster has "
            "only database 0"
        )
    options: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        if has_password:
            options["password"] = unquote(password)
    for name, value in parse_qsl(parts.query):
        if name == "password":
            options["password"] = value
        elif name in ("username", "client_name"):
            options[name] = value
        else:
            raise ConfigError(
                f"REDIS_URL={redact_url(url)!r}: query option {name!r} is not supported with a "
                "cluster; expected none, or password, username, client_name"
            )
    if parts.scheme == "rediss+cluster":
        options["ssl"] = True
    return nodes, options


def open_cluster(url: str) -> RedisCluster:
    """A ``RedisCluster`` client for a ``redis+cluster://`` URL (connects on first use), with
    the same hiredis command packing as :func:`~redisio.connection.open_redis`."""
    nodes, options = _cluster_nodes(url)
    cluster: RedisCluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        # a slot whose shard is down must not stop the client from serving the others
        require_full_coverage=False,
        socket_connect_timeout=NODE_CONNECT_TIMEOUT_S,
        # no socket_timeout: redis-py then sends through asyncio.wait_for, which on Python 3.11
        # can swallow a task's cancellation (a pump would never stop); the pumps bound their
        # own round trips with asyncio.timeout instead (NODE_REPLY_TIMEOUT_S)
        socket_keepalive=True,
        health_check_interval=10,
        **options,
    )
    # every node the client discovers from here on packs commands with hiredis
    kwargs = cluster.nodes_manager.connection_kwargs
    kwargs["connection_class"] = fast_packing(kwargs["connection_class"])
    cluster.commands_parser = _CommandsOnce()
    return cluster


class _CommandsOnce(AsyncCommandsParser):
    """redis-py re-reads ``COMMAND`` from the first primary at every re-discovery of the cluster
    (after any connection error), and fails while that primary is down: then every command of
    the client fails, on every shard, until a replica takes over. ``COMMAND``'s answer is the
    same on every node, so it is read once."""

    __slots__ = ()

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if node is not None:
            self.node = node
        if not self.commands:
            await super().initialize(node)


@dataclasses.dataclass(eq=False)
class RedisStores:
    """Where a process's keys live: ``sessions`` holds the session keys (the one Redis, or a
    ``RedisCluster`` typed as ``Redis``: callers use only single-slot commands and
    non-transactional pipelines on it), ``queue`` arq's queue and the cross-session keys (the
    same client on a single Redis), ``keys`` the key layout that goes with them."""

    sessions: Redis
    queue: ArqRedis
    keys: Keys
    cluster: RedisCluster | None = None

    @classmethod
    def single(cls, redis: ArqRedis, keys: Keys) -> RedisStores:
        """Everything on one Redis client (tests and embedding inject one)."""
        return cls(sessions=redis, queue=redis, keys=keys)

    async def disconnect(self) -> None:
        """Drop every connection, also those in use (unblocks tasks stuck on a frozen Redis)."""
        await self.queue.connection_pool.disconnect(inuse_connections=True)
        if self.cluster is not None:
            await self.cluster.nodes_manager.aclose()
        elif self.sessions is not self.queue:
            await self.sessions.connection_pool.disconnect(inuse_connections=True)

    async def aclose(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await self.cluster.aclose()
        await self.queue.aclose(close_connection_pool=True)


def open_stores(settings: CommonSettings, redis: ArqRedis | None = None) -> RedisStores:
    """The clients ``settings`` asks for (nothing connects until first used); with ``redis``
    (tests, embedding) that one client for everything, in the single-node layout."""
    if redis is not None:
        return RedisStores.single(redis, Keys(settings.namespace))
    keys = settings.key_layout()
    queue = open_redis(settings.queue_redis_url, queue=keys.queue)
    if not settings.cluster:
        sessions: Redis = (
            queue
            if settings.queue_redis_url == settings.redis_url
            else (open_redis(settings.redis_url, queue=keys.queue))
        )
        return RedisStores(sessions=sessions, queue=queue, keys=keys)
    cluster = open_cluster(settings.redis_url)
    return RedisStores(sessions=cast(Redis, cluster), queue=queue, keys=keys, cluster=cluster)


async def check_stores(stores: RedisStores, settings: CommonSettings) -> None:
    """Fail with a ``ConfigError`` naming the variable when a URL points at the wrong kind of
    Redis (a cluster node as a single Redis, or the reverse); connection errors propagate."""
    if stores.cluster is not None:
        try:
            await stores.cluster.initialize()
        except RedisClusterException as exc:
            if "not enabled" in str(exc):
                raise ConfigError(
                    f"REDIS_URL={settings.redis_url_redacted!r} is a redis+cluster:// URL but "
                    "the server is not a Redis Cluster node; expected redis://host:port/db for a "
                    "single Redis"
                ) from None
            raise RedisConnectionError(str(exc)) from exc
    checks: list[tuple[Redis, str]] = [
        (stores.queue, "VOICEGRID_QUEUE_URL" if settings.queue_url else "REDIS_URL")
    ]
    if stores.cluster is None and stores.sessions is not stores.queue:
        checks.append((stores.sessions, "REDIS_URL"))
    for client, variable in checks:
        url = settings.queue_redis_url if variable != "REDIS_URL" else settings.redis_url
        if (await client.info("server")).get("redis_mode") == "sentinel":
            raise ConfigError(
                f"{variable}={redact_url(url)!r} points at a Redis Sentinel, not at a Redis; "
                "expected redis+sentinel://host:port[,host:port...]/<service> to reach the "
                "primary it names"
            )
        info = await client.info("cluster")
        if int(info.get("cluster_enabled", 0)):
            raise ConfigError(
                f"{variable}={redact_url(url)!r} points at a Redis Cluster node; expected a "
                "single-node Redis"
                + (
                    " (arq's queue needs one)"
                    if variable != "REDIS_URL"
                    else "; for the session streams on a cluster use redis+cluster://host:port"
                )
            )


# --- nodes and routing ------------------------------------------------------------------------


class NodeConnection(PumpConnection):
    """A :class:`~redisio.connection.PumpConnection` to one cluster node: a connection of its
    own (not from the cluster client's node pool, which would hand a connection interrupted
    mid-reply to the next command)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node_name = node.name
        self._node = node
        self._conn = None

    async def _connection(self) -> Any:
        if self._conn is None:
            make: Any = self._node.connection_class
            self._conn = make(**self._node.connection_kwargs)
        return self._conn

    async def _drop(self, conn: Any) -> None:
        self._conn = None
        await conn.disconnect(nowait=True)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()


class NodeMux:
    """One node's connection shared by a pump's buckets: what they submit while a round trip is
    in flight, or within ``linger_s`` of the previous one, goes out in one pipeline."""

    def __init__(self, node: ClusterNode, linger_s: float) -> None:
        self.name = node.name
        self.linger_s = linger_s
        self._conn = NodeConnection(node)
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def call(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply or ``ResponseError``; a connection error raises."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((commands, future))
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds(), name=f"voicegrid-mux-{self.name}")
        return await future

    async def _rounds(self) -> None:
        clock = asyncio.get_running_loop().time
        started = clock() - self.linger_s
        while True:
            await self._wakeup.wait()
            pause = started + self.linger_s - clock()
            if pause > 0:
                await asyncio.sleep(pause)
            started = clock()
            self._wakeup.clear()
            batch = [(c, f) for c, f in self._pending if not f.done()]
            self._pending = []
            if not batch:
                continue
            try:
                async with asyncio.timeout(NODE_REPLY_TIMEOUT_S):
                    replies = await self._conn.pipeline([c for cs, _ in batch for c in cs])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            at = 0
            for commands, future in batch:
                if not future.done():
                    future.set_result(replies[at : at + len(commands)])
                at += len(commands)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._pending:
            future.cancel()
        self._pending = []
        await self._conn.close()


class Topology:
    """The cluster client's slot map, re-discovered at most every :data:`REFRESH_INTERVAL_S`
    however many buckets ask at once."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._ready = False
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    async def ready(self) -> None:
        """The slot map is known (after that, :meth:`refresh` keeps it current: the client's
        own re-initialisation after a connection error is not waited for)."""
        if not self._ready:
            await self.cluster.initialize()
            self._ready = True

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The primary of ``slot`` (``SlotNotCoveredError`` if the map has none)."""
        return self.cluster.nodes_manager.get_node_from_slot(slot)

    def node_at(self, host: str, port: int) -> ClusterNode:
        node = self.cluster.get_node(host=host, port=port)
        if node is None:
            options = self.cluster.nodes_manager.connection_kwargs
            node = ClusterNode(host, port, **options)
        return node

    async def refresh(self) -> None:
        """Re-discover the slot map (a shared, rate-limited refresh); errors are logged."""
        if self._refreshing is None or self._refreshing.done():
            if time.monotonic() - self._refreshed_at < REFRESH_INTERVAL_S:
                return
            self._refreshing = asyncio.create_task(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        try:
            await self.cluster.nodes_manager.initialize()
        except Exception as exc:
            log.warning("cluster slot map refresh failed (%s)", type(exc).__name__)
        finally:
            self._refreshed_at = time.monotonic()


class ClusterRouter:
    """Sends one bucket's commands to the node owning its slot, through that node's
    :class:`NodeMux` (one per node for the pump that owns this router)."""

    def __init__(self, topology: Topology, linger_s: float) -> None:
        self.topology = topology
        self.linger_s = linger_s
        self._muxes: dict[str, NodeMux] = {}

    def _mux(self, node: ClusterNode) -> NodeMux:
        mux = self._muxes.get(node.name)
        if mux is None:
            mux = self._muxes[node.name] = NodeMux(node, self.linger_s)
        return mux

    async def node(self, slot: int) -> ClusterNode:
        await self.topology.ready()
        try:
            return self.topology.node_for_slot(slot)
        except SlotNotCoveredError as exc:
            await self.topology.refresh()
            raise RedisConnectionError(f"slot {slot} has no primary right now") from exc

    async def call_node(self, node: ClusterNode, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply (or error reply) on ``node``, no redirection followed; a
        connection error or a reply that does not come in time raises and refreshes the slot
        map."""
        try:
            return await self._mux(node).call(commands)
        except _FAILED:
            await self.topology.refresh()
            raise

    async def call(self, slot: int, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply (or error reply) on the owner of ``slot``. ``MOVED`` refreshes
        the slot map and re-sends, ``ASK`` re-sends with ``ASKING`` to the importing node, up
        to :data:`MAX_REDIRECTS` times; what is still redirected is returned as the error. A
        connection error raises (some commands may have run) and refreshes the map."""
        node = await self.node(slot)
        try:
            replies = await self._mux(node).call(commands)
        except REDIS_ERRORS:
            await self.topology.refresh()
            raise
        for _ in range(MAX_REDIRECTS):
            moved = [i for i, r in enumerate(replies) if isinstance(r, MovedError)]
            # (redis-py's MovedError is a subclass of AskError)
            asked = [
                i
                for i, r in enumerate(replies)
                if isinstance(r, AskError) and not isinstance(r, MovedError)
            ]
            if not moved and not asked:
                break
            if moved:
                await self.topology.refresh()
                owner = await self.node(slot)
                again = await self._mux(owner).call([commands[i] for i in moved])
                for i, reply in zip(moved, again, strict=True):
                    replies[i] = reply
            if asked:
                target = cast(AskError, replies[asked[0]])
                importer = self.topology.node_at(target.host, int(target.port))
                sent: list[Command] = []
                for i in asked:
                    sent += [("ASKING",), commands[i]]
                again = await self._mux(importer).call(sent)
                for i, reply in zip(asked, again[1::2], strict=True):
                    replies[i] = reply
        return replies

    async def close(self) -> None:
        muxes, self._muxes = list(self._muxes.values()), {}
        for mux in muxes:
            await mux.close()


@dataclasses.dataclass(slots=True)
class SlotPipe:
    """A writer lane's :class:`~redisio.connection.PipelineLink`: its bucket's slot, routed."""

    router: ClusterRouter
    slot: int

    async def pipeline(self, commands: list[Command]) -> list[Any]:
        return await self.router.call(self.slot, commands)

    async def close(self) -> None:
        return None


def _poll_command(streams: dict[bytes, bytes], count: int) -> Command:
    """A non-blocking ``XREAD`` of ``streams`` at their cursors."""
    return ("XREAD", "COUNT", count, "STREAMS", *streams.keys(), *streams.values())


class BucketReads:
    """A reader lane's :class:`~redisio.connection.StreamLink`: while its bucket has entries (or
    had one within :data:`QUIET_S`) it reads without blocking through the node's mux (one round
    trip per node and linger for all busy buckets); once it has been quiet that long it blocks on
    a connection of its own, which the lane's wake stream interrupts."""

    def __init__(self, router: ClusterRouter, slot: int, wake_key: bytes) -> None:
        self.router = router
        self.slot = slot
        self.wake_key = wake_key
        self.busy = False
        self._last_entry = -QUIET_S
        self._blocking: NodeConnection | None = None

    async def xread(
        self, streams: dict[bytes, bytes], *, count: int, block_ms: int
    ) -> list[tuple[bytes, Entries]]:
        try:
            if self.busy:
                result = await self._poll(streams, count)
            else:
                result = await self._block(streams, count, block_ms)
        except (TryAgainError, ClusterDownError):
            # the slot is mid-migration, or its shard fails over: read again shortly
            await asyncio.sleep(TRYAGAIN_PAUSE_S)
            return []
        except (MovedError, AskError):
            await self.router.topology.refresh()
            self.busy = True  # the routed reads follow redirections
            return []
        self.saw(any(entries for stream, entries in result if stream != self.wake_key))
        return result

    def saw(self, entries: bool) -> None:
        """Note whether a read of the bucket found entries: it stays busy until it has found
        none for :data:`QUIET_S`."""
        now = asyncio.get_running_loop().time()
        if entries:
            self._last_entry = now
        self.busy = now - self._last_entry < QUIET_S

    async def _poll(self, streams: dict[bytes, bytes], count: int) -> list[tuple[bytes, Entries]]:
        (reply,) = await self.router.call(self.slot, [_poll_command(streams, count)])
        if isinstance(reply, BaseException):
            raise reply
        return _stream_reply(reply)

    async def pipeline(self, commands: list[Command]) -> list[Any]:
        """One round trip of the bucket's commands (the reader's check of which stream Redis
        refuses); a slot moving or failing over counts as unreachable, not as a refusal."""
        replies = await self.router.call(self.slot, commands)
        if any(isinstance(reply, RETRY_REPLIES) for reply in replies):
            raise RedisConnectionError(f"slot {self.slot} is moving or failing over")
        return replies

    async def _block(
        self, streams: dict[bytes, bytes], count: int, block_ms: int
    ) -> list[tuple[bytes, Entries]]:
        node = await self.router.node(self.slot)
        conn = self._blocking
        if conn is None or conn.node_name != node.name:
            if conn is not None:
                await conn.close()
            conn = self._blocking = NodeConnection(node)
        try:
            async with asyncio.timeout(block_ms / 1000 + NODE_REPLY_TIMEOUT_S):
                return await conn.xread(streams, count=count, block_ms=block_ms)
        except REDIS_ERRORS:
            await self.router.topology.refresh()
            raise

    async def close(self) -> None:
        conn, self._blocking = self._blocking, None
        if conn is not None:
            await conn.close()


# --- the sharded pumps ------------------------------------------------------------------------


class _Lanes:
    """Lanes (one pump per bucket) created on first use and run while the owner runs."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def _start(self, tag: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._running and tag not in self._tasks:
            self._tasks[tag] = asyncio.create_task(run(), name=f"voicegrid-lane-{tag}")

    async def _run_lanes(
        self, lanes: Mapping[str, Any], close: Callable[[], Awaitable[None]]
    ) -> None:
        self._running = True
        for tag, lane in lanes.items():
            self._start(tag, lane.run)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._running = False
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await close()


class _NodePoller:
    """Reads the busy buckets of one node for one :class:`ShardedReader`: each round is one
    ``XREAD`` per bucket in the node's mux pipeline, delivered here, so a busy bucket costs a
    command per round and no task switch of its own. A bucket leaves (its lane takes over again)
    when it has been quiet for :data:`QUIET_S` (the lane then blocks), or when its read got an
    error reply (the lane's own read follows the redirection, waits out ``TRYAGAIN`` or isolates
    the stream Redis refuses); all of them leave when the node is unreachable."""

    def __init__(self, router: ClusterRouter, node: ClusterNode) -> None:
        self.router = router
        self.node = node
        self.lanes: dict[str, _BucketReader] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def join(self, tag: str, lane: _BucketReader) -> None:
        self.lanes[tag] = lane
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._rounds(), name=f"voicegrid-poll-{self.node.name}"
            )

    def leave(self, tag: str) -> None:
        lane = self.lanes.pop(tag, None)
        if lane is not None:
            lane.released.set()

    async def _rounds(self) -> None:
        try:
            while True:
                if not self.lanes:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._round(list(self.lanes.items()))
        finally:
            # however the poller ends (closed, or a bug), no lane waits for it
            for tag in list(self.lanes):
                self.leave(tag)

    async def _round(self, lanes: list[tuple[str, _BucketReader]]) -> None:
        commands = [lane.poll_command() for _, lane in lanes]
        try:
            replies = await self.router.call_node(self.node, commands)  # refreshes on failure
        except _FAILED:
            for tag, lane in lanes:
                self._hand_back(tag, lane)  # its own read meets the error and backs off
            return
        for (tag, lane), reply in zip(lanes, replies, strict=True):
            if self.lanes.get(tag) is not lane:
                continue  # left meanwhile
            if isinstance(reply, BaseException):
                self._hand_back(tag, lane)
                continue
            try:
                lane.reads.saw(lane.deliver(_stream_reply(reply)))
            except Exception:
                log.exception("bucket %s: unreadable poll reply; the lane reads it itself", tag)
                self._hand_back(tag, lane)
                continue
            if not lane.reads.busy:
                self.leave(tag)  # quiet: the lane blocks on its own connection

    def _hand_back(self, tag: str, lane: _BucketReader) -> None:
        """The lane's next read is its own, through the router (which follows redirections,
        waits out ``TRYAGAIN``, isolates a refused stream or backs off)."""
        lane.routed = True
        self.leave(tag)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ShardedReader(_Lanes):
    """The cluster counterpart of :class:`~redisio.pumps.StreamReader` (same ``add``,
    ``remove``, ``run``): one reader lane per bucket with subscribed streams; while a bucket
    is busy its node's :class:`_NodePoller` reads it, in one round trip per node for all of
    them."""

    def __init__(
        self,
        stores: RedisStores,
        health: RedisHealth,
        *,
        count: int = 200,
        block_ms: int = 1000,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        super().__init__()
        assert stores.cluster is not None
        self.stores = stores
        self.health = health
        self.count = count
        self.block_ms = block_ms
        self.router = ClusterRouter(Topology(stores.cluster), linger_s)
        self.reader_id = uuid.uuid4().hex
        self.lanes: dict[str, _BucketReader] = {}
        self._pollers: dict[str, _NodePoller] = {}

    def _poller(self, node: ClusterNode) -> _NodePoller:
        poller = self._pollers.get(node.name)
        if poller is None:
            poller = self._pollers[node.name] = _NodePoller(self.router, node)
        return poller

    def _lane(self, stream: str) -> _BucketReader:
        tag = hash_tag(stream)
        lane = self.lanes.get(tag)
        if lane is None:
            wake = self.stores.keys.bucket_wake(tag, self.reader_id)
            lane = self.lanes[tag] = _BucketReader(
                self.stores.sessions,
                self.stores.keys,
                self.health,
                count=self.count,
                block_ms=self.block_ms,
                linger_s=0.0,  # the node mux lingers, for all buckets of the node at once
                wake_key=wake,
                reads=BucketReads(self.router, key_slot(tag), wake.encode()),
                tag=tag,
                pollers=self._poller,
            )
            self._start(tag, lane.run)
        return lane

    async def add(
        self,
        stream: str,
        *,
        after: str,
        consumer: Callable[[Entries], None],
        on_error: Callable[[ResponseError], None] | None = None,
    ) -> None:
        await self._lane(stream).add(stream, after=after, consumer=consumer, on_error=on_error)

    def remove(self, stream: str) -> None:
        lane = self.lanes.get(hash_tag(stream))
        if lane is not None:
            lane.remove(stream)

    async def run(self) -> None:
        await self._run_lanes(self.lanes, self._close)

    async def _close(self) -> None:
        pollers, self._pollers = list(self._pollers.values()), {}
        for poller in pollers:
            await poller.close()
        await self.router.close()


class _BucketReader(StreamReader):
    """One bucket's reader lane: blocks on a connection of its own while its bucket is quiet,
    hands its reads to the node's :class:`_NodePoller` while it is busy, and reads through the
    router (following redirections) once after the poller met an error reply."""

    backoff_cap_s = LANE_BACKOFF_CAP_S

    def __init__(
        self,
        *args: Any,
        reads: BucketReads,
        tag: str,
        pollers: Callable[[ClusterNode], _NodePoller],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, reads=reads, **kwargs)
        self.reads = reads
        self.tag = tag
        self._pollers = pollers
        self.released = asyncio.Event()
        #: the poller met an error reading this bucket: the next read is the lane's own
        self.routed = False

    def poll_command(self) -> Command:
        return _poll_command(self._streams(), self.count)

    def deliver(self, reply: list[tuple[bytes, Entries]]) -> bool:
        self.health.ok()
        return self._deliver(reply)

    async def _read_loop(self, backoff: Backoff) -> None:
        self._started = asyncio.get_running_loop().time()
        while True:
            if self.reads.busy and not self.routed:
                await self._park()
                continue
            self.routed = False
            await self._read_once(backoff)

    async def _park(self) -> None:
        """Read through the node's poller until it hands the bucket back."""
        try:
            node = await self.reads.router.node(self.reads.slot)
        except _UNROUTABLE:
            self.routed = True  # the lane's own read meets it and backs off
            return
        poller = self._pollers(node)
        self.released.clear()
        poller.join(self.tag, self)
        try:
            await self.released.wait()
        finally:
            if poller.lanes.get(self.tag) is self:
                poller.leave(self.tag)

    async def _wake(self) -> None:
        try:
            await super()._wake()
        except (ResponseError, RedisClusterException) as exc:
            # CLUSTERDOWN, TRYAGAIN mid-migration: the lane's next read sees the new stream
            self.health.failed(exc)


Source = TypeVar("Source")


class ShardedWriter(_Lanes, Generic[Source]):
    """The cluster counterpart of a :class:`~redisio.pumps.PipelineWriter` (same ``mark``,
    ``flush``, ``run``): one writer lane per bucket, each a writer made by ``make`` for the
    bucket's :class:`SlotPipe`; ``tag_of`` names a source's bucket tag."""

    def __init__(
        self,
        stores: RedisStores,
        make: Callable[[SlotPipe], PipelineWriter[Source, Any]],
        tag_of: Callable[[Source], str],
        *,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        super().__init__()
        assert stores.cluster is not None
        self.router = ClusterRouter(Topology(stores.cluster), linger_s)
        self._make = make
        self._tag_of = tag_of
        self.lanes: dict[str, PipelineWriter[Source, Any]] = {}

    def _lane(self, source: Source) -> PipelineWriter[Source, Any]:
        tag = self._tag_of(source)
        lane = self.lanes.get(tag)
        if lane is None:
            lane = self.lanes[tag] = self._make(SlotPipe(self.router, key_slot(tag)))
            lane.backoff_cap_s = LANE_BACKOFF_CAP_S
            self._start(tag, lane.run)
        return lane

    def mark(self, source: Source) -> None:
        self._lane(source).mark(source)

    async def flush(self, source: Source, *, within_s: float) -> bool:
        return await self._lane(source).flush(source, within_s=within_s)

    async def run(self) -> None:
        await self._run_lanes(self.lanes, self.router.close)


class GroupedPipelines:
    """Pipelines of commands grouped by hash tag (the renewer's, the reaper's): on a single
    Redis one round trip on a held connection; on a cluster one round trip per node, and a
    group whose node failed (or took over ``timeout_s``) gets the exception instead of replies,
    without holding up the others."""

    def __init__(self, stores: RedisStores, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._router = (
            ClusterRouter(Topology(stores.cluster), 0.0) if stores.cluster is not None else None
        )
        self._conn = PumpConnection(stores.sessions) if stores.cluster is None else None

    async def execute(
        self, groups: Mapping[str, Sequence[Command]]
    ) -> dict[str, list[Any] | BaseException]:
        if self._conn is not None:
            flat = [c for commands in groups.values() for c in commands]
            try:
                async with asyncio.timeout(self.timeout_s):  # not wait_for: see open_cluster
                    replies = await self._conn.pipeline(flat)
            except _FAILED as exc:
                return dict.fromkeys(groups, exc)
            out: dict[str, list[Any] | BaseException] = {}
            at = 0
            for tag, commands in groups.items():
                out[tag] = replies[at : at + len(commands)]
                at += len(commands)
            return out
        assert self._router is not None
        router = self._router

        async def one(tag: str, commands: Sequence[Command]) -> list[Any] | BaseException:
            try:
                async with asyncio.timeout(self.timeout_s):
                    replies: list[Any] = await router.call(key_slot(tag), commands)
                return replies
            except _FAILED as exc:
                return exc

        results = await asyncio.gather(*(one(t, c) for t, c in groups.items()))
        return dict(zip(groups, results, strict=True))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._router is not None:
            await self._router.close()
