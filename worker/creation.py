"""Turning create requests into sessions: the worker side of ``<ns>:create`` (docs/streams.md).

Every worker reads the create stream in one consumer group (:data:`protocol.create.CREATE_GROUP`),
so each request is handled by one worker. Handling a request is idempotent, so a request whose
worker died half-way is simply handled again by another one (``XAUTOCLAIM`` after
:data:`CLAIM_IDLE_S`):

1. validate it (:func:`protocol.create.decode_create_request`, plus: the provider is one this
   worker can run, the request is younger than :data:`~protocol.create.CREATE_MAX_AGE_S`);
2. claim the session id and write the record (:func:`redisio.creation.claim_session`): a valid
   request gets a ``pending`` record, a rejected one a ``closed`` record and, in the same atomic
   step, ``error``, the failed ``connect`` acknowledgement and ``closed`` on its output stream;
   an invalid or already used session id is answered on ``<ns>:create:rejected``;
3. add the session to ``<ns>:live`` and enqueue the job of epoch 1 (deterministic job id: a
   second enqueue makes no second job); the worker that takes the job connects the provider and
   answers with ``connect`` ack ``ref=<request id>``;
4. ``XACK`` and ``XDEL`` the request.

A crash between 2 and 3 is covered twice: the request is taken over, and the reaper enqueues a
``pending`` session of ``<ns>:live`` whose first lease is late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Protocol

from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.backoff import Backoff
from protocol.create import (
    CREATE_GROUP,
    CREATE_MAX_AGE_S,
    CreateRequest,
    RequestRejected,
    decode_create_request,
    rejection_entries,
)
from protocol.errors import (
    ConfigError,
    RuntimeFailure,
    SessionTimeout,
    UsageError,
)
from protocol.keys import Keys
from protocol.streams import (
    CLOSED_TTL_S,
    IDLE_TTL_S,
    SessionRecord,
    encode_record,
    now_us,
)
from providers import check_options, registered_providers
from redisio.connection import REDIS_ERRORS, RedisHealth
from redisio.creation import claim_session, publish_rejection
from redisio.jobs import enqueue_session
from redisio.metrics import CREATE_REQUESTS

from .settings import WorkerSettings

__all__ = ["CLAIM_IDLE_S", "FIRST_LEASE_WAIT_S", "CreateConsumer"]

log = logging.getLogger("voicegrid.worker.create")

#: A request read by a worker that has not acknowledged it after this long is taken over.
CLAIM_IDLE_S = 2.0
#: How long a new session may wait for its first lease before the reaper enqueues it again.
FIRST_LEASE_WAIT_S = 5.0
#: How long one blocking read of the create stream waits.
READ_BLOCK_MS = 1000
#: Requests read at once.
READ_COUNT = 32
#: Consumers of the group (workers that are gone) are removed once idle this long, if they
#: hold no request.
STALE_CONSUMER_S = 600.0


class CreateHost(Protocol):
    """What the consumer needs from its worker process (``WorkerRuntime``)."""

    redis: Redis
    queue: ArqRedis
    keys: Keys
    worker_id: str
    health: RedisHealth
    draining: bool
    settings: WorkerSettings


class CreateConsumer:
    """Reads ``<ns>:create`` for one worker and turns each request into a session."""

    def __init__(self, host: CreateHost) -> None:
        self.host = host
        # the create streams and <ns>:live are on the queue's Redis; session records on the
        # session store (the same Redis unless REDIS_URL is a cluster)
        self.redis = host.queue
        self.sessions = host.redis
        self.keys = host.keys
        self._next_claim = 0.0
        self._next_cleanup = time.monotonic() + random.uniform(0, 60)

    async def ensure_group(self) -> None:
        """Create the stream and the group if needed (from the start: waiting requests count)."""
        try:
            await self.redis.xgroup_create(self.keys.create, CREATE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Handle requests until cancelled; Redis errors are retried with backoff."""
        backoff = Backoff(first=0.1)
        group_ready = False
        while True:
            if self.host.draining:
                await asyncio.sleep(0.2)
                continue
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                await self.poll()
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.error("create stream: %s", exc)
                    await backoff.wait()
                group_ready = False  # the stream was deleted (e.g. FLUSHDB): make it again
            except REDIS_ERRORS as exc:
                self.host.health.failed(exc)
                await backoff.wait()
            except Exception:
                log.exception("create stream: handling failed; retrying")
                await backoff.wait()

    async def poll(self, block_ms: int = READ_BLOCK_MS) -> int:
        """One round: take over stale requests when due, then read new ones; returns how many
        requests were handled."""
        handled = 0
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_IDLE_S / 2
            _, claimed, *_ = await self.redis.xautoclaim(
                self.keys.create,
                CREATE_GROUP,
                self.host.worker_id,
                min_idle_time=int(CLAIM_IDLE_S * 1000),
                start_id="0-0",
                count=READ_COUNT,
            )
            handled += await self.handle_all(claimed)
        if now >= self._next_cleanup:
            self._next_cleanup = now + 60.0
            await self._forget_stale_consumers()
        reply = await self.redis.xreadgroup(
            CREATE_GROUP,
            self.host.worker_id,
            {self.keys.create: ">"},
            count=READ_COUNT,
            block=block_ms,
        )
        for _, entries in reply or []:
            handled += await self.handle_all(entries)
        return handled

    async def handle_all(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> int:
        """Handle a batch concurrently, then acknowledge and delete it."""
        live = [(entry_id, fields) for entry_id, fields in entries if fields]
        ids = [entry_id for entry_id, _ in entries]
        if not ids:
            return 0
        await asyncio.gather(*(self.handle(eid.decode(), fields) for eid, fields in live))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.keys.create, CREATE_GROUP, *ids)
            pipe.xdel(self.keys.create, *ids)
            await pipe.execute()
        return len(live)

    async def handle(self, request_id: str, fields: dict[bytes, bytes]) -> None:
        """Handle one request (idempotent); Redis errors propagate, the request stays pending.
        Any other failure is logged and answered (``internal_error`` on the rejected stream),
        so one bad request cannot come back forever."""
        try:
            await self._handle(request_id, fields)
        except REDIS_ERRORS:
            raise
        except Exception as exc:
            log.exception("create request %s could not be handled", request_id)
            CREATE_REQUESTS.labels("failed").inc()
            rejected = RequestRejected(
                "internal_error", RuntimeFailure(f"the worker failed on this request: {exc!r}")
            )
            await publish_rejection(self.redis, self.keys, request_id, fields.get(b"sid"), rejected)

    async def _handle(self, request_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            request = decode_create_request(fields)
            self._check_runnable(request_id, request)
        except RequestRejected as rejected:
            log.warning(
                "create request %s rejected (%s): %s", request_id, rejected.code, rejected.error
            )
            await self._reject(request_id, fields.get(b"sid"), rejected)
            CREATE_REQUESTS.labels("rejected").inc()
            return
        record = SessionRecord(
            provider=request.provider,
            model=request.model,
            config=request.config.model_dump(mode="json"),
            options=request.options,
            created_us=now_us(),
            request=request_id,
        )
        keys = self.keys.session(request.session_id)
        outcome, status = await claim_session(
            self.sessions, keys, request_id, encode_record(record), ttl_s=IDLE_TTL_S
        )
        if outcome == "taken":
            await self._taken(request_id, request.session_id)
            CREATE_REQUESTS.labels("taken").inc()
            return
        if status == "closed":
            return  # given up by its producer (or handled and ended already)
        deadline = int((time.time() + FIRST_LEASE_WAIT_S) * 1000)
        await self.redis.zadd(self.keys.live, {request.session_id: deadline})
        await enqueue_session(self.redis, self.keys, request.session_id, 1)
        CREATE_REQUESTS.labels("created").inc()
        log.info(
            "session %s created by request %s (%s %s)",
            request.session_id,
            request_id,
            request.provider,
            request.model,
        )

    def _check_runnable(self, request_id: str, request: CreateRequest) -> None:
        known = registered_providers()
        if request.provider not in known:
            raise RequestRejected(
                "invalid_request",
                ConfigError(f"field 'provider' is {request.provider!r}; expected one of {known}"),
                request.session_id,
            )
        try:  # the operator's allow-list of caller-settable options, as the gateway applies it
            check_options(
                request.provider, request.options, allowed=self.host.settings.caller_options
            )
        except ConfigError as exc:
            raise RequestRejected("invalid_request", exc, request.session_id) from None
        age_s = time.time() - int(request_id.partition("-")[0]) / 1000
        if age_s > CREATE_MAX_AGE_S:
            raise RequestRejected(
                "request_expired",
                SessionTimeout(
                    f"create request {request_id} waited {age_s:.0f}s for a worker (at most "
                    f"{CREATE_MAX_AGE_S:.0f}s); not started"
                ),
                request.session_id,
            )

    async def _reject(
        self, request_id: str, raw_sid: bytes | None, rejected: RequestRejected
    ) -> None:
        sid = rejected.session_id
        if sid is None:
            await publish_rejection(self.redis, self.keys, request_id, raw_sid, rejected)
            return
        record = SessionRecord(
            provider="",
            model="",
            config={},
            status="closed",
            created_us=now_us(),
            request=request_id,
        )
        keys = self.keys.session(sid)
        outcome, _ = await claim_session(
            self.sessions,
            keys,
            request_id,
            encode_record(record),
            ttl_s=CLOSED_TTL_S,
            replies=rejection_entries(request_id, rejected),
        )
        if outcome == "taken":
            await self._taken(request_id, sid)

    async def _taken(self, request_id: str, session_id: str) -> None:
        rejected = RequestRejected(
            "session_exists",
            UsageError(
                f"session {session_id!r} already exists; pick another session id (or attach to it)"
            ),
            session_id,
        )
        log.warning("create request %s rejected: %s", request_id, rejected.error)
        await publish_rejection(self.redis, self.keys, request_id, session_id, rejected)

    async def _forget_stale_consumers(self) -> None:
        with contextlib.suppress(ResponseError):
            consumers: list[dict[str, Any]] = await self.redis.xinfo_consumers(
                self.keys.create, CREATE_GROUP
            )
            for consumer in consumers:
                name = consumer.get("name")
                name = name.decode() if isinstance(name, bytes) else str(name)
                idle_s = int(consumer.get("idle", 0)) / 1000
                if (
                    name != self.host.worker_id
                    and int(consumer.get("pending", 0)) == 0
                    and idle_s > STALE_CONSUMER_S
                ):
                    await self.redis.xgroup_delconsumer(self.keys.create, CREATE_GROUP, name)
