"""``RedisRealtimeClient``: the ``RealtimeAudioClient`` interface spoken over Redis streams.

Application code does not change when it goes distributed: the client writes caller audio and
commands to the session's input stream and reads events from its output stream, while a worker
somewhere owns the provider connection (``docs/architecture.md``, ``docs/streams.md``).

Per process (per event loop and Redis client) there is one :class:`IngressHub`, shared by every
client: one coalescing writer (everything queued since its last round trip goes out in one
pipeline, per session in the order it was sent) and one multiplexed reader (one blocking
``XREAD`` over the output streams of every session the process follows). A hundred calls in one
process cost two Redis connections and two tasks, not two hundred.

Stateless: the session lives in Redis, so ``attach(session_id, after=event_id)`` continues it from
any process (e.g. after an ingress node restarted), and events are filtered by entry id, so none is
delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import uuid
import weakref
from collections import deque
from typing import Any

import orjson
from arq.connections import ArqRedis
from redis.exceptions import RedisClusterException, ResponseError

from protocol import (
    ConfigError,
    ConnectionEvent,
    ErrorEvent,
    NotConnectedError,
    RealtimeAudioClient,
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    RuntimeFailure,
    SessionState,
    SessionTimeout,
    StreamEntryError,
    UsageError,
    VoicegridError,
    parse_config,
    parse_update,
)
from protocol.audio import check_frame
from protocol.backoff import Backoff
from protocol.create import CREATE_MAXLEN, check_options, encode_create_request
from protocol.keys import DEFAULT_NAMESPACE, Keys, SessionKeys, validate_session_id
from protocol.streams import (
    CLOSED_TTL_S,
    IDLE_TTL_S,
    INPUT_MAXLEN,
    AckEntry,
    Command,
    DisconnectCommand,
    DtmfCommand,
    EntryLimits,
    Fields,
    PingCommand,
    PlaybackCommand,
    RequestResponseCommand,
    SessionRecord,
    StateField,
    ToolResponseCommand,
    UpdateConfigCommand,
    decode_output,
    decode_record,
    encode_audio,
    encode_command,
    encode_record,
    entry_id_key,
    error_from_body,
    now_us,
)
from redisio.cluster import RedisStores, ShardedReader, ShardedWriter, hash_tag, open_stores
from redisio.connection import REDIS_ERRORS, RETRY_REPLIES, RedisHealth
from redisio.creation import claim_session
from redisio.metrics import AUDIO_FRAMES_DROPPED
from redisio.pumps import PipelineWriter, ReaderPump, StreamReader
from redisio.settings import CommonSettings, batch_linger_s, entry_limits, redact_url

__all__ = [
    "ACK_TIMEOUT_S",
    "INGRESS_BUFFER_S",
    "SESSION_CHECK_S",
    "SESSION_LOST",
    "IngressHub",
    "RedisRealtimeClient",
]

log = logging.getLogger("voicegrid.ingress")

#: Seconds a command that the interface awaits (ping, update_config, disconnect) waits for its
#: acknowledgement.
ACK_TIMEOUT_S = 15.0
#: Seconds of caller audio a client buffers while Redis is unreachable; older frames are dropped
#: (drop-oldest, counted, reported as an ``error`` event).
INGRESS_BUFFER_S = 5.0
#: How often a connecting client looks for a rejection of its create request that could not be
#: answered on the session's output stream (its id was taken meanwhile).
REJECTION_POLL_S = 1.0
#: Seconds between two checks of the sessions a process follows (one pipelined ``HMGET`` of
#: status and epoch per live session): a session that vanished (Redis restarted without its
#: data, an older copy restored, closed by someone else without a ``closed`` event) is reported
#: within about two of these, well inside two lease TTLs.
SESSION_CHECK_S = 1.0
#: What the session check takes for "Redis is unreachable", not for "the session is gone" (on
#: a cluster also a shard failing over, a slot moving, the cluster not reachable at all).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *REDIS_ERRORS,
    *RETRY_REPLIES,
    RedisClusterException,
)
#: The ``error`` code (and ``closed`` reason) of a session that is gone without its worker
#: saying so (docs/streams.md, "When the session is gone").
SESSION_LOST = "session_lost"

# Creates a session's input stream (empty, with the idle expiry) when the record exists and is
# open. The ingress appends with NOMKSTREAM, so no write of it can re-create a stream of a
# session that is gone (it would have no expiry, and nobody would read it).
# KEYS: state, input. ARGV: idle ttl ms. Returns the record's status, or '' when it is missing.
_ENSURE_INPUT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'closed' and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', 0, '*', 'v', '0')
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return status
"""


class IngressHub:
    """One coalescing writer and one multiplexed reader shared by a process's clients."""

    def __init__(self, stores: RedisStores, *, owns_redis: bool) -> None:
        self.stores = stores
        #: the session keys' Redis; ``queue``: the create stream's (the same unless a cluster)
        self.redis = redis = stores.sessions
        self.queue = stores.queue
        self.keys = keys = stores.keys
        self._owns_redis = owns_redis
        # the same multiplexed reader the worker uses for its input streams, over output streams
        # both pumps linger VOICEGRID_BATCH_LINGER_MS (default 5 ms), as a worker's do
        linger = batch_linger_s()
        health = RedisHealth()
        self._reader: ReaderPump
        self._writer: IngressWriter | ShardedWriter[RedisRealtimeClient]
        if stores.cluster is None:
            self._reader = StreamReader(redis, keys, health, count=500, linger_s=linger)
            self._writer = IngressWriter(redis, health, linger_s=linger)
        else:
            # one pump per bucket, one round trip per node (redisio.cluster)
            self._reader = ShardedReader(stores, health, count=500, linger_s=linger)
            self._writer = ShardedWriter(
                stores,
                lambda pipe: IngressWriter(redis, health, linger_s=0.0, conn=pipe),
                lambda client: hash_tag(client._keys_input),
                linger_s=linger,
            )
        self.health = health
        self._tasks: list[asyncio.Task[None]] = []
        self._users = 0
        self._clients: dict[str, RedisRealtimeClient] = {}  # output stream -> its follower
        self._ensure_input = redis.register_script(_ENSURE_INPUT)

    # --- lifecycle -----------------------------------------------------------------------------

    def acquire(self) -> None:
        self._users += 1
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._writer.run(), name="voicegrid-ingress-writer"),
                loop.create_task(self._reader.run(), name="voicegrid-ingress-reader"),
                loop.create_task(self._watch(), name="voicegrid-ingress-watch"),
            ]

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        # forget the hub before awaiting: a client created meanwhile must get a fresh hub, not
        # this one whose tasks are being cancelled (it would never read or write)
        _HUBS.pop(_hub_key(self), None)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_redis:
            with contextlib.suppress(Exception):
                await self.stores.aclose()

    # --- reading -------------------------------------------------------------------------------

    async def follow(self, stream: str, after: str, client: RedisRealtimeClient) -> None:
        self._clients[stream] = client
        await self._reader.add(
            stream, after=after, consumer=client._on_output, on_error=client._on_stream_error
        )

    def unfollow(self, stream: str, client: RedisRealtimeClient) -> None:
        """``client`` stops following ``stream``; a no-op if another client follows it now (a
        refused connect with a live session's id must not cut that session's follower off)."""
        if self._clients.get(stream) is client:
            del self._clients[stream]
            self._reader.remove(stream)

    # --- is the session still there? -------------------------------------------------------

    async def _watch(self) -> None:
        """Every :data:`SESSION_CHECK_S`: one pipelined read of every live session's status and
        epoch, so callers learn when their session is gone (see :data:`SESSION_LOST`)."""
        while True:
            await asyncio.sleep(SESSION_CHECK_S)
            clients = [c for c in self._clients.values() if c.connected and c._keys is not None]
            if not clients:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for client in clients:
                        assert client._keys is not None
                        pipe.hmget(client._keys.state, [StateField.STATUS, StateField.EPOCH])
                    replies = await pipe.execute()
            except _UNAVAILABLE:
                # unreachable (or a cluster shard failing over) is not gone: the next check
                # after Redis is back decides
                continue
            for client, (status, epoch) in zip(clients, replies, strict=True):
                client._check_record(status, epoch)

    def input_missing(self, client: RedisRealtimeClient) -> None:
        """An append found no input stream: create it if the session is open, else report the
        session gone. The client's entries wait meanwhile (in order)."""
        task = asyncio.get_running_loop().create_task(self._input_missing(client))
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _input_missing(self, client: RedisRealtimeClient) -> None:
        keys = client._keys
        if keys is None:
            return
        backoff = Backoff()
        while client.state is not SessionState.CLOSED:
            try:
                raw = await self._ensure_input(
                    keys=[keys.state, keys.input], args=[IDLE_TTL_S * 1000]
                )
                break
            except REDIS_ERRORS:
                await backoff.wait()
        else:
            return
        status = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not status:
            client._session_lost(
                "its record is missing (Redis restarted without its data, or it expired)"
            )
        elif status == "closed":
            client._check_record(b"closed", None)  # the watch decides once it saw the event
        else:
            client._resume_writes()

    # --- writing -------------------------------------------------------------------------------

    def mark(self, client: RedisRealtimeClient) -> None:
        self._writer.mark(client)


class IngressWriter(PipelineWriter["RedisRealtimeClient", "list[_Pending]"]):
    """The ingress's writer: every entry a client queued since the last round becomes one
    ``XADD`` to its session's input stream, in the order it was queued; a command's future gets
    its entry id (or the error Redis answered)."""

    latency_label = "ingress_write"

    def _take(self, source: RedisRealtimeClient) -> list[_Pending] | None:
        return source._take_pending() or None

    def _restore(self, source: RedisRealtimeClient, batch: list[_Pending]) -> None:
        source._restore_pending(batch)

    def _commands(
        self, work: list[tuple[RedisRealtimeClient, list[_Pending]]]
    ) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for source, batch in work:
            # NOMKSTREAM: an append never re-creates the stream of a session that is gone
            head = ("XADD", source._keys_input, "NOMKSTREAM", "MAXLEN", "~", INPUT_MAXLEN, "*")
            commands += [(*head, *itertools.chain.from_iterable(f.items())) for f, _ in batch]
        return commands

    async def _settle(
        self,
        work: list[tuple[RedisRealtimeClient, list[_Pending]]],
        replies: list[Any],
        done: float,
    ) -> list[tuple[RedisRealtimeClient, list[_Pending]]]:
        retry: list[tuple[RedisRealtimeClient, list[_Pending]]] = []
        at = 0
        for source, batch in work:
            answers = replies[at : at + len(batch)]
            at += len(batch)
            for index, ((_fields, future), reply) in enumerate(zip(batch, answers, strict=True)):
                if isinstance(reply, RETRY_REPLIES):
                    # not written (a cluster slot moving or failing over): this entry and the
                    # ones after it go again, in order
                    retry.append((source, batch[index:]))
                    break
                if reply is None:
                    # no input stream: every entry from here on was refused too; they wait
                    # (in order) until the stream is created or the session is known gone
                    source._input_missing(batch[index:])
                    break
                if future is None or future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply.decode() if isinstance(reply, bytes) else reply)
        return retry


_HUBS: dict[tuple[int, int | str, str], IngressHub] = {}
_HUB_LOOPS: weakref.WeakValueDictionary[int, asyncio.AbstractEventLoop] = (
    weakref.WeakValueDictionary()
)


def _hub_key(hub: IngressHub) -> tuple[int, int | str, str]:
    for key, value in _HUBS.items():
        if value is hub:
            return key
    return (0, 0, "")


def _get_hub(
    settings: CommonSettings, redis: ArqRedis | None, stores: RedisStores | None
) -> IngressHub:
    loop = asyncio.get_running_loop()
    given = stores if stores is not None else redis
    where = f"{settings.redis_url} {settings.queue_url} {settings.cluster_buckets}"
    key = (id(loop), id(given) if given is not None else where, settings.namespace)
    hub = _HUBS.get(key)
    if hub is not None and _HUB_LOOPS.get(id(loop)) is loop:
        return hub
    if stores is None:
        stores = (
            RedisStores.single(redis, Keys(settings.namespace))
            if redis is not None
            else open_stores(settings)
        )
    hub = IngressHub(stores, owns_redis=given is None)
    _HUBS[key] = hub
    _HUB_LOOPS[id(loop)] = loop
    return hub


_Pending = tuple[dict[str, Any], "asyncio.Future[Any] | None"]


class RedisRealtimeClient(RealtimeAudioClient):
    """A voice session run by a voicegrid worker, driven through Redis (``docs/streams.md``).

    ``RedisRealtimeClient(redis_url, *, provider, model, session_id=None, **options)``:
    ``options`` go to the provider client on the worker (``providers.create_client``), except
    credentials and endpoints, which are the worker's configuration. These keyword options are
    the ingress's own: ``namespace`` (key prefix; default ``VOICEGRID_NAMESPACE`` or
    ``voicegrid``), ``connect_timeout_s`` (default 30), ``redis`` (an ``arq``/``redis.asyncio``
    client to use instead of opening ``redis_url``), ``queue_url`` (the Redis of the create
    stream; default ``VOICEGRID_QUEUE_URL``, else ``redis_url``; required when ``redis_url`` is a
    ``redis+cluster://`` URL), ``stores`` (open ``redisio.cluster.RedisStores`` to share) and
    ``limits`` (the size limits of audio, commands and tool outputs; default from
    ``VOICEGRID_MAX_*``, see docs/streams.md): an entry over them raises ``EntryTooLarge`` and is
    not sent.

    ``capabilities`` are the provider client's, as reported by the worker once connected (or
    attached); before that they are the defaults.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        provider: str,
        model: str,
        session_id: str | None = None,
        namespace: str | None = None,
        connect_timeout_s: float = 30.0,
        redis: ArqRedis | None = None,
        queue_url: str | None = None,
        stores: RedisStores | None = None,
        limits: EntryLimits | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model=model)
        if not isinstance(provider, str) or not provider:
            raise ConfigError(f"provider must be a non-empty string, got {provider!r}")
        check_options(options)
        try:
            orjson.dumps(options)
        except TypeError as exc:
            raise ConfigError(
                f"provider options must be JSON-serialisable to travel through Redis: {exc}"
            ) from None
        if connect_timeout_s <= 0:
            raise ConfigError(f"connect_timeout_s must be positive, got {connect_timeout_s!r}")
        self.redis_url = redis_url
        self._redis = redis
        self._stores = stores
        self._namespace = namespace or os.environ.get("VOICEGRID_NAMESPACE", DEFAULT_NAMESPACE)
        self._redis_settings = _redis_settings(redis_url, queue_url, self._namespace, redis, stores)
        self._keys_layout = stores.keys if stores is not None else self._redis_settings.key_layout()
        self._session_id = validate_session_id(session_id) if session_id is not None else None
        self._options = options
        self._connect_timeout_s = connect_timeout_s
        self._limits = limits if limits is not None else entry_limits()
        # ``provider`` and ``capabilities`` are class-level on provider clients; an ingress
        # client speaks for whichever provider its session uses, so they live on the instance.
        self.__dict__["provider"] = provider
        self.__dict__["capabilities"] = RealtimeCapabilities()
        self._config: RealtimeSessionConfig | None = None
        self._keys: SessionKeys | None = None
        self._keys_input = ""
        self._hub: IngressHub | None = None
        self._pending: deque[_Pending] = deque()
        self._pending_audio_bytes = 0
        self._overflowing = False
        self._last_key = (0, 0)
        self._last_event_id: str | None = None
        self._acks: dict[str, asyncio.Future[AckEntry]] = {}
        self._early_acks: dict[str, AckEntry] = {}
        self._finishing: asyncio.Task[None] | None = None
        # what the session is known to be: the highest lease epoch seen (entries' ``ep``, the
        # record), a ``closed`` read while connecting, a close seen in the record but not yet
        # on the output stream, and why the session is gone when it vanished
        self._epoch = 0
        self._closed_early = False
        self._closed_in_record = False
        self._lost: str | None = None
        # entries wait here while the input stream is being created (or found gone)
        self._writes_blocked = False
        self._disconnecting: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"RedisRealtimeClient({redact_url(self.redis_url)!r}, provider={self.provider!r}, "
            f"model={self.model!r}, session_id={self._session_id!r})"
        )

    @property
    def session_id(self) -> str | None:
        """The session's id: set once ``connect`` created the session or ``attach`` joined it."""
        return self._session_id

    @property
    def last_event_id(self) -> str | None:
        """The output entry id of the last event delivered (for ``attach(after=...)``)."""
        return self._last_event_id

    @property
    def config(self) -> RealtimeSessionConfig | None:
        """The session config as this client knows it: set by ``connect`` or ``attach``, changed
        by a successful ``update_config``; ``None`` before."""
        return self._config

    # --- connect, attach, disconnect ---------------------------------------------------------

    async def connect(self, config: RealtimeSessionConfig | dict[str, Any]) -> None:
        """Create the session and resolve once a worker has connected it to the provider.

        Raises the worker's error (e.g. ``ProviderAuthError`` with its ``code``) if the provider
        connection failed, ``SessionTimeout`` if no worker connected it in time.
        """
        if self.state is not SessionState.IDLE:
            raise UsageError(f"connect() needs a fresh client; this one is {self.state.value}")
        parsed = parse_config(config)
        self._lifecycle.to(SessionState.CONNECTING)
        session_id = self._session_id or uuid.uuid4().hex
        self._session_id = session_id
        keys = self._keys_layout.session(session_id)
        self._bind(keys, parsed)
        hub = self._open_hub()
        request = encode_create_request(
            session_id=session_id,
            provider=self.provider,
            model=self.model,
            config=parsed,
            options=self._options,
        )
        request_id: str | None = None
        try:
            request_id = await self._create(hub, keys, request)
            ack = self._expect_ack(request_id)
            await hub.follow(keys.output, "0-0", self)
            entry = await self._created(hub, ack, request_id)
        except TimeoutError:
            await self._abandon(hub, keys, request_id)
            raise SessionTimeout(
                f"no worker connected session {session_id} within {self._connect_timeout_s}s; "
                "check that voicegrid workers run against this Redis and namespace "
                f"({self._namespace!r})"
            ) from None
        except BaseException:
            await self._abandon(hub, keys, request_id)
            raise
        if not entry.ok:
            await self._abandon(hub, keys, request_id)
            assert entry.error is not None
            raise entry.error
        self._set_capabilities(entry.result.get("capabilities"))
        if self._closed_early:
            # the session ended right after it connected (its ``closed`` came with or just
            # after the acknowledgement): connect resolves, to a closed client, never a live one
            await self._finish()
            return
        self._lifecycle.to(SessionState.LIVE)

    async def _create(self, hub: IngressHub, keys: SessionKeys, request: Fields) -> str:
        """Post the create request (docs/streams.md, "Creating a session"); its entry id."""
        try:
            if await hub.redis.exists(keys.state):
                raise UsageError(
                    f"session {keys.session_id!r} already exists; use attach() to join it or "
                    "pick another session_id"
                )
            entry_id = await hub.queue.xadd(
                self._keys_layout.create,
                request,  # type: ignore[arg-type]
                maxlen=CREATE_MAXLEN,
                approximate=True,
            )
        except REDIS_ERRORS as exc:
            raise _redis_failure(exc, self.redis_url) from exc
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def _created(
        self, hub: IngressHub, ack: asyncio.Future[AckEntry], request_id: str
    ) -> AckEntry:
        """Wait for the acknowledgement of ``request_id``; a request rejected without a session
        of its own (the id was taken meanwhile) is answered on ``<ns>:create:rejected``, which
        is checked every :data:`REJECTION_POLL_S`. Raises ``TimeoutError`` after the connect
        timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(ack), min(REJECTION_POLL_S, remaining))
            with contextlib.suppress(*REDIS_ERRORS):
                rejected = await hub.queue.xrange(
                    self._keys_layout.create_rejected, min=request_id, count=100
                )
                for _, fields in rejected:
                    if fields.get(b"req") == request_id.encode():
                        body = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
                        raise error_from_body(body)

    async def _abandon(self, hub: IngressHub, keys: SessionKeys, request_id: str | None) -> None:
        """A connect that failed or timed out: close the session so no worker runs it later.

        Only a session this client's request made is touched: the id is claimed with a closed
        record if no worker handled the request yet, else its record is marked closed."""
        hub.unfollow(keys.output, self)
        if request_id is not None:
            closed = SessionRecord(
                provider=self.provider,
                model=self.model,
                config={},
                status="closed",
                created_us=now_us(),
                request=request_id,
            )
            with contextlib.suppress(*REDIS_ERRORS):
                outcome, _ = await claim_session(
                    hub.redis, keys, request_id, encode_record(closed), ttl_s=CLOSED_TTL_S
                )
                if outcome == "retry":
                    async with hub.redis.pipeline(transaction=False) as pipe:
                        pipe.hset(keys.state, StateField.STATUS, "closed")
                        for key in (keys.state, keys.input, keys.output):
                            pipe.pexpire(key, CLOSED_TTL_S * 1000)
                        await pipe.execute()
                    await hub.queue.zrem(self._keys_layout.live, keys.session_id)
        self._lifecycle.to(SessionState.CLOSED)
        await self._close_hub()

    async def attach(self, session_id: str, after: str | None = None) -> None:
        """Join the live session ``session_id`` (created by another client or process).

        Events after output entry id ``after`` are delivered (``None``: only new ones).
        """
        if self.state is not SessionState.IDLE:
            raise UsageError(f"attach() needs a fresh client; this one is {self.state.value}")
        keys = self._keys_layout.session(session_id)
        start = after
        if start is not None:
            try:
                entry_id_key(start)
            except StreamEntryError:
                raise ConfigError(
                    f"after={after!r} is not a stream entry id; expected '<ms>-<seq>' as given "
                    "by last_event_id"
                ) from None
        hub = self._open_hub()
        try:
            raw = await hub.redis.hgetall(keys.state)  # type: ignore[misc]
            if start is None:
                newest = await hub.redis.xrevrange(keys.output, count=1)
                start = newest[0][0].decode() if newest else "0-0"
        except REDIS_ERRORS as exc:
            await self._close_hub()
            raise _redis_failure(exc, self.redis_url) from exc
        if not raw:
            await self._close_hub()
            raise NotConnectedError(f"session {session_id!r} does not exist (or has expired)")
        record = decode_record(raw)
        self._set_capabilities(record.capabilities)
        if record.status == "closed":
            await self._close_hub()
            raise NotConnectedError(f"session {session_id!r} has ended")
        if record.provider != self.provider:
            await self._close_hub()
            raise ConfigError(
                f"session {session_id!r} runs provider {record.provider!r}, this client was "
                f"made for {self.provider!r}"
            )
        self._session_id = session_id
        self._bind(keys, parse_config(record.config))
        self._last_key = entry_id_key(start)
        self._epoch = record.epoch
        self._lifecycle.to(SessionState.CONNECTING)
        await hub.follow(keys.output, start, self)
        if self._closed_early:
            await self._finish()  # it ended while we joined: a closed client, as connect()
            return
        self._lifecycle.to(SessionState.LIVE)

    async def disconnect(self) -> None:
        """End the session (the worker closes the provider connection); idempotent.

        A call while another is in progress returns when that one has finished, so every
        caller of ``disconnect`` sees the session closed (and its ``closed`` event) on return.
        """
        if self._disconnecting is not None:
            await asyncio.shield(self._disconnecting)
            return
        if self.state in (SessionState.IDLE, SessionState.CLOSED, SessionState.CLOSING):
            return
        self._disconnecting = asyncio.get_running_loop().create_future()
        try:
            self._lifecycle.to(SessionState.CLOSING)
            with contextlib.suppress(SessionTimeout, VoicegridError):
                await self._request(DisconnectCommand())
            await self._finish()
        finally:
            self._disconnecting.set_result(None)

    async def detach(self, *, flush_timeout_s: float = 2.0) -> None:
        """Stop following the session without ending it; idempotent; emits no event.

        The session goes on on its worker, and any client (in this or another process) continues
        it with ``attach(session_id, after=last_event_id)``. Audio and commands queued but not yet
        written to Redis are flushed first, waiting at most ``flush_timeout_s``.
        """
        if self.state in (SessionState.IDLE, SessionState.CLOSED):
            return
        if self._pending and self._hub is not None:
            fields, future = self._pending[-1]
            if future is None:
                future = asyncio.get_running_loop().create_future()
                # nobody else awaits this one: retrieve its outcome so none is reported as lost
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
                self._pending[-1] = (fields, future)
            with contextlib.suppress(TimeoutError, *REDIS_ERRORS, ResponseError):
                await asyncio.wait_for(asyncio.shield(future), flush_timeout_s)
        await self._finish()

    async def _finish(self) -> None:
        self._mark_closed()
        await self._close_hub()

    def _mark_closed(self) -> None:
        if self._hub is not None and self._keys is not None:
            self._hub.unfollow(self._keys.output, self)
        if self.state is not SessionState.CLOSED:
            self._lifecycle.to(SessionState.CLOSED)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(NotConnectedError("the session ended"))
        self._acks.clear()

    # --- the interface -------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when the worker's provider connection answers."""
        if not self.connected:
            return False
        try:
            entry = await self._request(PingCommand(), timeout_s=10.0)
        except (SessionTimeout, VoicegridError):
            return False
        return bool(entry.ok and entry.result.get("alive"))

    def send_audio(self, frame: bytes) -> None:
        """Queue a caller frame for the input stream; never blocks (bounded, drop-oldest)."""
        if not self.connected or self._config is None:
            raise self._not_connected("send_audio")
        data = check_frame(frame, self._config.input_audio)
        self._limits.check_audio(len(data), self._config.input_audio)
        self._queue(encode_audio(data), None)
        self._pending_audio_bytes += len(data)
        budget = self._config.input_audio.bytes_per_second * INGRESS_BUFFER_S
        if self._pending_audio_bytes > budget:
            self._drop_oldest_audio(budget)

    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        """Return tool results to the model (queued in order with the audio)."""
        if not self.connected:
            raise self._not_connected("send_tool_response")
        try:
            command = ToolResponseCommand(responses=list(responses))
        except ValueError as exc:
            raise ConfigError(f"invalid tool responses: {exc}") from None
        for response in command.responses:
            self._limits.check_tool_output(response)
        self._queue(self._encode(command), None)

    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        """Change the session config; resolves once the worker applied it (``config-updated``)."""
        if not self.connected:
            raise self._not_connected("update_config")
        update = parse_update(config)
        entry = await self._request(UpdateConfigCommand(update=update))
        if not entry.ok:
            assert entry.error is not None
            raise entry.error
        if self._config is not None:
            self._config = self._config.merged(update)

    def report_playback(self, response_id: str | None, played_ms: int) -> None:
        """Tell the worker how much of ``response_id`` the caller has heard (queued in order with
        the audio; barge-in truncation on the worker uses it, see ``RealtimeAudioClient``)."""
        if not self.connected:
            raise NotConnectedError("report_playback needs a connected session")
        try:
            command = PlaybackCommand(response_id=response_id, played_ms=played_ms)
        except ValueError as exc:
            raise ConfigError(f"invalid playback report: {exc}") from None
        self._queue(encode_command(command), None)

    def send_dtmf(self, digit: str) -> None:
        """Relay a keypad digit (0-9, *, #, A-D): the worker publishes it as a ``dtmf`` event,
        so every client attached to the session (the backend's too) sees it in order."""
        if not self.connected:
            raise NotConnectedError("send_dtmf needs a connected session")
        try:
            command = DtmfCommand(digit=digit)
        except ValueError:
            raise ConfigError(
                f"DTMF digit {digit!r} is invalid; expected one of 0-9, *, #, A-D"
            ) from None
        self._queue(encode_command(command), None)

    def _request_response(self, instruction: str | None) -> None:
        if not self.connected:
            raise self._not_connected("request_response")
        self._queue(self._encode(RequestResponseCommand(instruction=instruction)), None)

    # --- when the session is gone --------------------------------------------------------------

    def _not_connected(self, what: str) -> NotConnectedError:
        if self._lost is not None:
            return NotConnectedError(f"{what}: {self._lost}")
        return NotConnectedError(f"{what} needs a connected session; call connect() first")

    def _check_record(self, status: bytes | None, epoch: bytes | None) -> None:
        """The record's status and epoch as the hub's watch read them (see SESSION_CHECK_S)."""
        if not self.connected or self._keys is None:
            return
        if status is None:
            self._session_lost(
                "its record is missing (Redis restarted without its data, or it expired)"
            )
            return
        if epoch is not None:
            try:
                seen = int(epoch)
            except ValueError:
                seen = self._epoch
            if seen < self._epoch:
                self._session_lost(
                    f"its lease epoch went back from {self._epoch} to {seen} (Redis restored "
                    "an older copy of it)"
                )
                return
            self._epoch = seen
        if status == b"closed":
            # a worker writes ``closed`` on the output stream in the same step as the status:
            # give the reader one more check to deliver it before calling the session lost
            if self._closed_in_record:
                self._session_lost("its record was closed without a closed event")
            self._closed_in_record = True

    def _session_lost(self, reason: str) -> None:
        """The session vanished without its worker saying so: ``error`` (:data:`SESSION_LOST`,
        not recoverable), then ``closed``; nothing queued is written any more."""
        if self.state in (SessionState.IDLE, SessionState.CLOSED):
            return
        message = f"session {self._session_id} is gone: {reason}"
        log.warning("%s", message)
        self._lost = message
        self._drop_pending(message)
        self._mark_closed()
        self.emit("error", ErrorEvent(code=SESSION_LOST, message=message, recoverable=False))
        self.emit("closed", ConnectionEvent(reason=SESSION_LOST))
        self._finishing = asyncio.get_running_loop().create_task(self._close_hub())

    def _on_stream_error(self, exc: ResponseError) -> None:
        """Redis refuses to read this session's output stream (e.g. the key holds another type):
        the session cannot be followed; the process's other sessions go on."""
        self._session_lost(f"Redis rejects reading its output stream: {exc}")

    def _drop_pending(self, why: str) -> None:
        pending, self._pending = self._pending, deque()
        self._pending_audio_bytes = 0
        self._writes_blocked = False
        for _, future in pending:
            if future is not None and not future.done():
                future.set_exception(NotConnectedError(why))

    def _input_missing(self, batch: list[_Pending]) -> None:
        """The writer found no input stream for ``batch`` (see ``IngressHub.input_missing``)."""
        self._restore_pending(batch)
        if not self._writes_blocked and self._hub is not None:
            self._writes_blocked = True
            self._hub.input_missing(self)

    def _resume_writes(self) -> None:
        """The input stream exists now: write what waited."""
        self._writes_blocked = False
        if self._pending and self._hub is not None:
            self._hub.mark(self)

    # --- plumbing ------------------------------------------------------------------------------

    def _bind(self, keys: SessionKeys, config: RealtimeSessionConfig) -> None:
        self._keys = keys
        self._keys_input = keys.input
        self._config = config

    def _open_hub(self) -> IngressHub:
        if self._hub is None:
            self._hub = _get_hub(self._redis_settings, self._redis, self._stores)
            self._hub.acquire()
        return self._hub

    async def _close_hub(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.release()

    def _set_capabilities(self, raw: object) -> None:
        if isinstance(raw, dict):
            try:
                self.__dict__["capabilities"] = RealtimeCapabilities.model_validate(raw)
            except ValueError:
                log.warning("worker reported invalid capabilities; keeping the defaults")

    def _queue(self, fields: dict[str, Any], future: asyncio.Future[Any] | None) -> None:
        assert self._hub is not None
        self._pending.append((fields, future))
        self._hub.mark(self)

    def _take_pending(self) -> list[_Pending]:
        if self._writes_blocked:
            return []
        batch = list(self._pending)
        self._pending.clear()
        self._pending_audio_bytes = 0
        self._overflowing = False
        return batch

    def _restore_pending(self, batch: list[_Pending]) -> None:
        self._pending.extendleft(reversed(batch))
        self._pending_audio_bytes = sum(len(f.get("d", b"")) for f, _ in self._pending)
        if self._config is not None:
            budget = self._config.input_audio.bytes_per_second * INGRESS_BUFFER_S
            if self._pending_audio_bytes > budget:
                self._drop_oldest_audio(budget)

    def _drop_oldest_audio(self, budget: float) -> None:
        kept: deque[_Pending] = deque()
        dropped = 0
        for fields, future in self._pending:
            if self._pending_audio_bytes > budget and "d" in fields and future is None:
                self._pending_audio_bytes -= len(fields["d"])
                dropped += 1
                continue
            kept.append((fields, future))
        self._pending = kept
        if dropped:
            AUDIO_FRAMES_DROPPED.labels("in").inc(dropped)
            if not self._overflowing:
                self._overflowing = True
                self.emit(
                    "error",
                    ErrorEvent(
                        code="audio_buffer_overflow",
                        message=(
                            f"Redis is not keeping up: dropped the oldest {dropped} caller "
                            f"frame(s) beyond {INGRESS_BUFFER_S}s of buffered audio"
                        ),
                        recoverable=True,
                    ),
                )

    def _encode(self, command: Command) -> dict[str, Any]:
        """``command`` as an input entry; ``EntryTooLarge`` if its body is over the limit."""
        fields = encode_command(command)
        body = fields["b"]
        assert isinstance(body, bytes)
        self._limits.check_command(command.type, len(body))
        return fields

    def _expect_ack(self, ref: str) -> asyncio.Future[AckEntry]:
        future: asyncio.Future[AckEntry] = asyncio.get_running_loop().create_future()
        early = self._early_acks.pop(ref, None)
        if early is not None:
            future.set_result(early)
        else:
            self._acks[ref] = future
        return future

    async def _request(self, command: Command, *, timeout_s: float = ACK_TIMEOUT_S) -> AckEntry:
        """Send ``command`` and wait for the worker's acknowledgement."""
        fields = self._encode(command)
        written: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(fields, written)
        try:
            async with asyncio.timeout(timeout_s):
                entry_id = await written
                return await self._expect_ack(str(entry_id))
        except TimeoutError:
            raise SessionTimeout(
                f"session {self._session_id}: no answer to {command.type} within {timeout_s}s"
            ) from None
        except REDIS_ERRORS as exc:
            raise _redis_failure(exc, self.redis_url) from exc

    def _failed_over(self, event: ConnectionEvent) -> None:
        """The worker moved the session to a fallback target: ``provider``, ``model`` and
        ``capabilities`` are the new target's from here on (they change only with this event)."""
        if event.provider:
            self.__dict__["provider"] = event.provider
        if event.model:
            self.model = event.model
        if event.capabilities is not None:
            self._set_capabilities(event.capabilities)

    def _on_output(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Entries of the output stream, in order (called by the hub's reader)."""
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            key = entry_id_key(entry_id)
            if key <= self._last_key:
                continue  # already delivered
            self._last_key = key
            try:
                entry = decode_output(fields)
            except StreamEntryError as exc:
                self.emit(
                    "error",
                    ErrorEvent(
                        code="malformed_entry",
                        message=f"output entry {entry_id}: {exc}",
                        recoverable=True,
                    ),
                )
                continue
            if entry.epoch > self._epoch:
                self._epoch = entry.epoch
            if isinstance(entry, AckEntry):
                future = self._acks.pop(entry.ref, None)
                if future is None:
                    if len(self._early_acks) < 256:
                        self._early_acks[entry.ref] = entry
                elif not future.done():
                    future.set_result(entry)
                continue
            self._last_event_id = entry_id
            payload = entry.payload
            if (
                entry.name == "reconnected"
                and isinstance(payload, ConnectionEvent)
                and payload.strategy == "failover"
            ):
                self._failed_over(payload)
            if entry.name == "closed" and self.state is SessionState.CONNECTING:
                self._closed_early = True  # connect() resolves to a closed client
            elif entry.name == "closed":
                # the session ended (here or through another client): closed before handlers run
                was_closing = self.state is SessionState.CLOSING
                self._mark_closed()
                self.emit(entry.name, entry.payload)
                if not was_closing:
                    self._finishing = asyncio.get_running_loop().create_task(self._close_hub())
                return
            self.emit(entry.name, entry.payload)


def _redis_settings(
    redis_url: str,
    queue_url: str | None,
    namespace: str,
    redis: ArqRedis | None,
    stores: RedisStores | None,
) -> CommonSettings:
    """Where a client's keys live: ``redis_url`` and ``queue_url`` (default
    ``VOICEGRID_QUEUE_URL``), validated as a worker validates them (``ConfigError`` naming the
    value); a client injected with ``redis`` or ``stores`` uses those as they are."""
    if redis is not None or stores is not None:
        return CommonSettings(redis_url=redis_url, namespace=namespace)
    env = {
        "REDIS_URL": redis_url,
        "VOICEGRID_NAMESPACE": namespace,
        "VOICEGRID_QUEUE_URL": os.environ.get("VOICEGRID_QUEUE_URL", "")
        if queue_url is None
        else queue_url,
    }
    if "VOICEGRID_CLUSTER_BUCKETS" in os.environ:
        env["VOICEGRID_CLUSTER_BUCKETS"] = os.environ["VOICEGRID_CLUSTER_BUCKETS"]
    return CommonSettings(**CommonSettings.redis_from_env(env))


def _redis_failure(exc: BaseException, url: str) -> VoicegridError:
    return RuntimeFailure(f"Redis at {redact_url(url)} is unreachable: {type(exc).__name__}")
