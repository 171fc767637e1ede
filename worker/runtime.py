"""The worker process: arq session jobs, the shared pumps, lease renewal, the reaper, drain.

One :class:`WorkerRuntime` per worker process holds what all its sessions share: the Redis
client, the multiplexed :class:`~redisio.pumps.StreamReader`, the coalescing
:class:`~redisio.pumps.OutputWriter`, the lease renewer, the cursor checkpointer, the reaper and
the ``/metrics`` server. arq carries the session jobs:

- A session job (``run_session(session_id, epoch)``, job id ``<ns>:session:<sid>:<epoch>``)
  takes the session's lease for that epoch, then removes itself from arq's queue: a job that
  runs for an hour must not sit in the queue (it would starve new jobs once running jobs fill
  ``queue_read_limit``), and arq would only restart it an hour after a crash. Liveness is the
  lease's business: a crashed owner stops renewing, and the reaper on any worker enqueues the job
  of the next epoch, which continues the session.
- ``max_jobs`` is the session capacity (``VOICEGRID_MAX_SESSIONS``): a full worker does not
  pull jobs, so the queue goes to workers with room.
- Load-aware admission (:mod:`worker.admission`): the heartbeat measures the event loop's lag;
  above ``VOICEGRID_MAX_LOOP_LAG_S`` the worker stops pulling jobs (arq's ``allow_pick_jobs``, as
  in a drain) until the lag is below half the budget. Its sessions go on; new sessions, takeovers
  and hand-offs are jobs, so they wait in the queue for a worker with a responsive loop.
- ``max_tries=1`` and ``retry_jobs=False``: a job is never re-run by arq; a new epoch gets a new
  job id.

Drain (SIGTERM or ``stop_event``): stop pulling jobs, then for each session close the provider
connection cleanly, save the exact input cursor, release the lease and enqueue the next epoch's
job, which another worker picks up within its poll delay; then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker, func
from redis.exceptions import NoScriptError, ResponseError

from protocol.backoff import Backoff
from protocol.create import RequestRejected, rejection_entries
from protocol.errors import InvalidSessionId, RuntimeFailure, StreamEntryError
from protocol.keys import SessionKeys, validate_session_id
from protocol.streams import (
    CLOSED_TTL_S,
    CONNECT_REF,
    IDLE_TTL_S,
    MAX_START_ATTEMPTS,
    OUTPUT_MAXLEN,
    SCHEMA_VERSION,
    Fields,
    StateField,
    decode_record,
)
from redisio.cluster import (
    GroupedPipelines,
    ShardedReader,
    ShardedWriter,
    SlotPipe,
    check_stores,
    open_stores,
)
from redisio.connection import REDIS_ERRORS, RETRY_REPLIES, RedisHealth
from redisio.http import HealthServer
from redisio.jobs import JOB_NAME, enqueue_session
from redisio.lease import Lease, LeaseScripts, SessionWrite
from redisio.metrics import (
    ADMISSION_PAUSED,
    ADMISSION_PAUSES,
    EVENT_LOOP_LAG,
    EVENT_LOOP_LAG_BUDGET,
    HANDOFFS,
    REDIS_COMMAND_LATENCY,
    SESSIONS_ACTIVE,
    SESSIONS_CAPACITY,
    SESSIONS_ENDED,
    SESSIONS_STARTED,
    START_FAILURES,
    TAKEOVERS,
    WORKER_DRAINING,
)
from redisio.pumps import OutputPump, OutputWriter, ReaderPump, StreamReader

from .admission import HEARTBEAT_S, AdmissionGate, LoopLagMeter
from .creation import CreateConsumer
from .session import Phase, SessionRunner
from .settings import WorkerSettings

__all__ = [
    "JOB_TIMEOUT_S",
    "POLL_DELAY_S",
    "WorkerRuntime",
    "arq_worker",
    "run_worker",
]

log = logging.getLogger("voicegrid.worker")

#: arq's timeout for a session job: longer than any session (OpenAI caps sessions at 60 min).
JOB_TIMEOUT_S = 6 * 3600
#: How often an idle worker polls arq's queue: bounds the hand-off gap after SIGTERM.
POLL_DELAY_S = 0.05
#: How often the trailing input cursors are saved.
CHECKPOINT_INTERVAL_S = 0.1
#: The reaper looks this long after the next lease deadline it knows of (the lease's PX starts
#: when Redis runs the renewal, a little after the deadline was computed), and never more often.
REAP_MARGIN_S = 0.02
#: Each step of closing a worker (cancelled tasks unwinding, closing Redis) waits at most this;
#: the drain leaves :data:`CLOSE_RESERVE_S` of its budget for them, so a worker exits within
#: ``VOICEGRID_DRAIN_TIMEOUT_S`` whatever Redis and the providers do.
CLOSE_STEP_S = 0.5
CLOSE_RESERVE_S = 4 * CLOSE_STEP_S
#: How soon renewals that failed (Redis or one shard unreachable) are tried again.
RENEW_RETRY_S = 0.1


class WorkerRuntime:
    """Everything one worker process shares between its sessions (see the module docstring)."""

    def __init__(self, settings: WorkerSettings, *, redis: ArqRedis | None = None) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        # the session keys' Redis (a cluster, or the one Redis) and the queue's (redisio.cluster)
        self.stores = open_stores(settings, redis)
        self.keys = self.stores.keys
        self.redis = self.stores.sessions
        self.queue = self.stores.queue
        self._own_redis = redis is None
        self.health = RedisHealth()
        self.scripts = LeaseScripts(self.redis)
        linger = settings.batch_linger_s
        self.reader: ReaderPump
        self.writer: OutputPump
        if self.stores.cluster is None:
            self.reader = StreamReader(self.redis, self.keys, self.health, linger_s=linger)
            self.writer = self._output_writer(linger_s=linger)
        else:
            # one pump per bucket, one round trip per node (redisio.cluster)
            self.reader = ShardedReader(self.stores, self.health, linger_s=linger)
            self.writer = ShardedWriter(
                self.stores,
                lambda pipe: self._output_writer(linger_s=0.0, conn=pipe),
                lambda source: source.lease.keys.tag,
                linger_s=linger,
            )
        #: the renewer's and the reaper's pipelines: a shard that fails delays only its own
        #: sessions' renewals and checks
        self._renewals = GroupedPipelines(self.stores, timeout_s=settings.lease_renew_s)
        self._reaps = GroupedPipelines(self.stores, timeout_s=settings.lease_renew_s)
        self.sessions: dict[str, SessionRunner] = {}
        self.draining = False
        self.arq: Worker | None = None
        self.http: HealthServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._renew_now = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self.loop_tick = time.monotonic()
        #: the event-loop lag, fed by the heartbeat (replaceable: tests slow one worker down)
        self.lag = LoopLagMeter()
        self.admission = AdmissionGate(settings.max_loop_lag_s)
        self._ended = asyncio.Condition()
        #: turns ``<ns>:create`` requests into sessions (any Redis client can create one)
        self.creator = CreateConsumer(self)
        self._next_deadline_ms: int | None = None

    def _output_writer(self, *, linger_s: float, conn: SlotPipe | None = None) -> OutputWriter:
        return OutputWriter(
            self.redis,
            self.scripts,
            self.health,
            maxlen=OUTPUT_MAXLEN,
            version=str(SCHEMA_VERSION).encode(),
            linger_s=linger_s,
            conn=conn,
        )

    # --- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the scripts and start the pumps, the renewer, the reaper and ``/metrics``."""
        backoff = Backoff(first=0.2)
        while True:
            try:
                if self._own_redis:
                    await check_stores(self.stores, self.settings)
                await self.scripts.load()
                break
            except REDIS_ERRORS as exc:
                self.health.failed(exc)
                log.warning(
                    "Redis at %s unreachable (%s); retrying",
                    self.settings.redis_url_redacted,
                    type(exc).__name__,
                )
                await backoff.wait()
        self.health.ok()
        WORKER_DRAINING.set(0)
        EVENT_LOOP_LAG.set(self.lag.value)
        EVENT_LOOP_LAG_BUDGET.set(self.admission.budget_s)
        ADMISSION_PAUSED.set(int(self.admission.paused))
        self._apply_admission()
        for coro, name in (
            (self.reader.run(), "reader"),
            (self.writer.run(), "writer"),
            (self._renew_loop(), "renewer"),
            (self._checkpoint_loop(), "checkpointer"),
            (self._reap_loop(), "reaper"),
            (self._heartbeat(), "heartbeat"),
            (self.creator.run(), "creator"),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"voicegrid-{name}"))
        self.http = HealthServer(self, port=self.settings.metrics_port)
        await self.http.start()
        log.info(
            "worker %s ready: redis=%s namespace=%s capacity=%d metrics port=%d",
            self.worker_id,
            self.settings.redis_url_redacted,
            self.settings.namespace,
            self.settings.max_sessions,
            self.http.port,
        )

    async def drain(self) -> None:
        """Stop taking sessions and hand every live one over: all of it within the drain
        timeout, whatever state Redis and the providers are in (a session still held then
        lapses and is taken over, as after a crash)."""
        self.draining = True
        WORKER_DRAINING.set(1)
        self._apply_admission()
        runners = list(self.sessions.values())
        if runners:
            log.info("draining: handing %d sessions over", len(runners))
        budget = max(CLOSE_STEP_S, self.settings.drain_timeout_s - CLOSE_RESERVE_S)
        try:
            async with asyncio.timeout(budget):
                await asyncio.gather(*(r.hand_off() for r in runners), return_exceptions=True)
                async with self._ended:
                    await self._ended.wait_for(lambda: not self.sessions)
        except TimeoutError:
            log.warning(
                "drain timeout (%.1fs): %d sessions not handed over; they will be taken over",
                budget,
                len(self.sessions),
            )

    async def close(self, *others: asyncio.Task[Any]) -> None:
        """Stop every task (and ``others``) and close the Redis client, in bounded time: a task
        cancelled while it waits on a frozen Redis (say, redis-py sending UNWATCH as it unwinds
        a transaction) is unblocked by closing the connections under it."""
        tasks = [*self._tasks, *self._background, *others]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_STEP_S)
            if stuck:
                log.warning("%d tasks wait on Redis; closing its connections", len(stuck))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.stores.disconnect(), CLOSE_STEP_S)
                await asyncio.wait(stuck, timeout=CLOSE_STEP_S)
            for task in tasks:  # what they died of was logged; do not report it again at exit
                if task.done() and not task.cancelled():
                    task.exception()
        if self.http is not None:
            await self.http.stop()
        for pipelines in (self._renewals, self._reaps):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pipelines.close(), CLOSE_STEP_S)
        if self._own_redis:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.stores.aclose(), CLOSE_STEP_S)

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and not self.overloaded
            and self.health.reachable()
            and len(self.sessions) < self.settings.max_sessions
        )

    # --- admission -----------------------------------------------------------------------------

    @property
    def overloaded(self) -> bool:
        """True while admission is paused: the event-loop lag went over its budget."""
        return self.admission.paused

    @property
    def capacity(self) -> int:
        """Sessions this worker admits at most right now: 0 while draining, the sessions it
        already owns while overloaded (no free slot), else ``max_sessions``."""
        if self.draining:
            return 0
        if self.overloaded:
            return len(self.sessions)
        return self.settings.max_sessions

    def loop_lagged(self, elapsed_s: float) -> None:
        """The heartbeat's sleep of ``HEARTBEAT_S`` took ``elapsed_s``: update the lag and the
        admission gate."""
        lag = self.lag.observe(elapsed_s)
        EVENT_LOOP_LAG.set(lag)
        if self.admission.update(lag):
            ADMISSION_PAUSED.set(int(self.admission.paused))
            budget_ms = self.admission.budget_s * 1000
            if self.admission.paused:
                ADMISSION_PAUSES.inc()
                log.warning(
                    "event loop lag %.0f ms is over the %.0f ms budget: taking no new session "
                    "(%d running)",
                    lag * 1000,
                    budget_ms,
                    len(self.sessions),
                )
            else:
                log.info(
                    "event loop lag %.0f ms is below %.0f ms: taking sessions again",
                    lag * 1000,
                    budget_ms / 2,
                )
            self._apply_admission()

    def _apply_admission(self) -> None:
        """arq pulls session jobs only while this worker is neither draining nor overloaded (the
        jobs it leaves stay queued for other workers). Called when that changes, not on every
        tick: whoever else switched arq off is not overruled."""
        if self.arq is not None:
            self.arq.allow_pick_jobs = not (self.draining or self.overloaded)
        self._publish_sessions()

    def _publish_sessions(self) -> None:
        SESSIONS_ACTIVE.set(len(self.sessions))
        SESSIONS_CAPACITY.set(self.capacity)

    # --- the session job ----------------------------------------------------------------------

    async def run_session(self, session_id: str, epoch: int, job_id: str) -> None:
        """The body of a session job; never raises (a failure must not kill the worker)."""
        try:
            await self._run_session(session_id, epoch, job_id)
        except Exception:
            log.exception("session job %s failed", job_id)

    async def _run_session(self, session_id: str, epoch: int, job_id: str) -> None:
        try:
            keys = self.keys.session(session_id)
        except InvalidSessionId as exc:
            log.error("job %s dropped: %s", job_id, exc)
            return
        if self.draining:
            return
        started = time.perf_counter()
        lease, why = await self.scripts.acquire(
            keys, epoch=epoch, worker_id=self.worker_id, ttl_s=self.settings.lease_ttl_s
        )
        REDIS_COMMAND_LATENCY.labels("lease").observe(time.perf_counter() - started)
        if lease is None:
            log.info("job %s not run: lease %s", job_id, why)
            return
        async with self.queue.pipeline(transaction=False) as pipe:
            # out of arq's queue: the lease and the reaper keep this session alive from now on
            pipe.zrem(self.keys.queue, job_id)
            pipe.zadd(self.keys.live, {session_id: self._deadline_ms()})
            if epoch > 1:
                old = self.keys.job_id(session_id, epoch - 1)
                pipe.delete(job_key_prefix + old, in_progress_key_prefix + old)
                pipe.delete(retry_key_prefix + old)
            if self.queue is self.redis:
                pipe.hgetall(keys.state)
            replies = await pipe.execute()
        if self.queue is not self.redis:  # the record is on the cluster
            replies.append(await self.redis.hgetall(keys.state))  # type: ignore[misc]
        raw = replies[-1]
        try:
            record = decode_record(raw)
            runner = SessionRunner(self, lease, record)
        except Exception as exc:
            # a record no worker can start (written by a producer that is not the ingress, or
            # corrupted): say why on the output stream and close it, never leave it pending for
            # the reaper to re-enqueue forever
            await self._close_unstartable(lease, raw, exc)
            return
        if runner.kind == "takeover":
            TAKEOVERS.labels("lease_expired").inc()
        elif runner.kind == "handoff":
            HANDOFFS.labels("received").inc()
        stale = self.sessions.get(session_id)
        if stale is not None:
            # this worker ran an older epoch of the session and lost its lease without noticing
            # yet (e.g. a stalled event loop): that runner must stop before this one starts
            stale.batch_fenced()
        self.sessions[session_id] = runner
        self._publish_sessions()
        SESSIONS_STARTED.labels(record.provider).inc()
        log.info("session %s epoch %d started (%s)", session_id, epoch, runner.kind)
        reason: str | None = None
        try:
            reason = await runner.run()
        finally:
            # cancelled (the process is going down without a drain): the lease just lapses and
            # another worker takes the session over, as after a crash
            if self.sessions.get(session_id) is runner:
                del self.sessions[session_id]
            self._publish_sessions()
            SESSIONS_ENDED.labels(record.provider, reason or "error").inc()
            async with self._ended:
                self._ended.notify_all()
            log.info("session %s epoch %d ended (%s)", session_id, epoch, reason)
        if reason in ("closed", "error"):
            with contextlib.suppress(*REDIS_ERRORS):
                await self.queue.zrem(self.keys.live, session_id)

    async def _close_unstartable(
        self, lease: Lease, raw: dict[bytes, bytes], exc: BaseException
    ) -> None:
        keys = lease.keys
        message = f"session {keys.session_id} cannot be started: {exc}"
        log.error("%s; closing it", message)
        START_FAILURES.labels("invalid_record").inc()
        code = "malformed_record" if isinstance(exc, StreamEntryError) else "invalid_record"
        entries = _unstartable_entries(
            lease.epoch, raw.get(b"status"), code, message, request=raw.get(b"req")
        )
        write = SessionWrite(
            lease, entries, {StateField.STATUS: b"closed"}, "close", float(CLOSED_TTL_S)
        )
        pipe = self.redis.pipeline(transaction=False)
        self.scripts.queue_write(
            pipe, [write], maxlen=OUTPUT_MAXLEN, version=str(SCHEMA_VERSION).encode()
        )
        with contextlib.suppress(*REDIS_ERRORS):
            await pipe.execute(raise_on_error=False)
            await self.queue.zrem(self.keys.live, keys.session_id)

    def released(self, runner: SessionRunner) -> None:
        """A hand-off's lease release was written: enqueue the next epoch for another worker."""
        HANDOFFS.labels("drain").inc()
        task = asyncio.get_running_loop().create_task(self._enqueue_next(runner))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _enqueue_next(self, runner: SessionRunner) -> None:
        sid = runner.session_id
        backoff = Backoff()
        for _ in range(20):
            try:
                await enqueue_session(self.queue, self.keys, sid, runner.lease.epoch + 1)
                await self.queue.zadd(self.keys.live, {sid: int(time.time() * 1000)})
                return
            except REDIS_ERRORS:
                await backoff.wait()
        log.error("session %s: hand-off enqueue failed; the reaper will pick it up", sid)

    def _deadline_ms(self) -> int:
        return int((time.time() + self.settings.lease_ttl_s) * 1000)

    # --- background loops ----------------------------------------------------------------------

    def renew_soon(self) -> None:
        """Renew now (a session holds input until its lease is confirmed)."""
        self._renew_now.set()

    async def _renew_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self.settings.lease_renew_s)
            self._renew_now.clear()
            runners = [
                r
                for r in self.sessions.values()
                if r.phase in (Phase.STARTING, Phase.LIVE, Phase.CLOSING)
            ]
            if not runners:
                continue
            # per bucket (hash tag) the fenced renewals of its sessions: one round trip per node
            groups: dict[str, list[SessionRunner]] = {}
            for runner in runners:
                groups.setdefault(runner.lease.keys.tag, []).append(runner)
            commands = {
                tag: [
                    self.scripts.renew_command(
                        r.lease, idle_ttl_s=IDLE_TTL_S, fields=r.renew_fields()
                    )
                    for r in members
                ]
                for tag, members in groups.items()
            }
            sent = time.monotonic()
            started = time.perf_counter()
            results = await self._renewals.execute(commands)
            failed = [r for r in results.values() if isinstance(r, BaseException)]
            if len(failed) < len(results):
                REDIS_COMMAND_LATENCY.labels("lease").observe(time.perf_counter() - started)
                self.health.ok()
            if failed:
                # those sessions renew again shortly (each holds input once its lease is old)
                self.health.failed(failed[0])
                log.warning(
                    "lease renewal of %d of %d buckets failed (%s); retrying",
                    len(failed),
                    len(results),
                    type(failed[0]).__name__,
                )
                self._renew_again_soon()
            renewed: list[SessionRunner] = []
            for runner, reply in _replies(groups, results):
                if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                    continue  # its node failed: renewed again soon
                if isinstance(reply, NoScriptError):
                    with contextlib.suppress(*REDIS_ERRORS):  # unreachable: the retry reloads
                        await self.scripts.load()
                    self._renew_now.set()
                elif isinstance(reply, RETRY_REPLIES):
                    self._renew_again_soon()  # a slot moving or failing over
                elif isinstance(reply, ResponseError):
                    log.error("lease renewal rejected: %s", reply)
                elif int(reply) == 1:
                    runner.lease.renewed(sent)
                    runner.lease_renewed()
                    renewed.append(runner)
                else:
                    runner.batch_fenced()
            if renewed:
                # only renewed leases move their <ns>:live deadline: a session whose shard is
                # down must look expired to the reapers once its lease is gone
                with contextlib.suppress(*REDIS_ERRORS):
                    deadline = self._deadline_ms()
                    await self.queue.zadd(self.keys.live, {r.session_id: deadline for r in renewed})

    def _renew_again_soon(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(RENEW_RETRY_S, self._renew_now.set)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            now = time.monotonic()
            for runner in list(self.sessions.values()):
                runner.checkpoint(now)

    async def _heartbeat(self) -> None:
        """Tick ``loop_tick`` for ``/healthz`` and measure how late the loop wakes us."""
        while True:
            before = self.loop_tick = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)
            self.loop_lagged(time.monotonic() - before)

    async def _reap_loop(self) -> None:
        """Re-enqueue sessions whose lease expired (their owner died); runs on every worker.

        A pass runs every 0.5-1 renewal interval, and also right after the next lease deadline
        the previous pass saw in ``<ns>:live``: a dead owner's sessions are found within
        :data:`REAP_MARGIN_S` of their lease expiring, not up to a whole interval later."""
        while True:
            delay = self.settings.lease_renew_s * random.uniform(0.5, 1.0)
            if self._next_deadline_ms is not None:
                due = self._next_deadline_ms / 1000 - time.time() + REAP_MARGIN_S
                delay = max(REAP_MARGIN_S, min(delay, due))
            await asyncio.sleep(delay)
            if self.draining:
                continue
            try:
                await self.reap_once()
            except REDIS_ERRORS as exc:
                self.health.failed(exc)
            except Exception:
                log.exception("reaper pass failed")

    async def reap_once(self) -> int:
        """One reaper pass; returns how many sessions it re-enqueued."""
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        expired = await self.queue.zrangebyscore(self.keys.live, "-inf", now_ms, start=0, num=200)
        enqueued = 0
        # the records and leases of the expired sessions, per bucket: one round trip per node,
        # and a shard that is down skips only its own sessions (the next pass sees them again)
        groups: dict[str, list[tuple[bytes, str, SessionKeys]]] = {}
        for raw in expired:
            sid = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                keys = self.keys.session(validate_session_id(sid))
            except InvalidSessionId:
                await self.queue.zrem(self.keys.live, raw)
                continue
            groups.setdefault(keys.tag, []).append((raw, sid, keys))
        fields = ("status", "epoch", StateField.STARTS, StateField.REQUEST)
        results = await self._reaps.execute(
            {
                tag: [
                    command
                    for _, _, keys in members
                    for command in (("HMGET", keys.state, *fields), ("EXISTS", keys.lease))
                ]
                for tag, members in groups.items()
            }
        )
        for tag, members in groups.items():
            replies = results[tag]
            if isinstance(replies, BaseException):
                self.health.failed(replies)
                continue
            for index, (raw, sid, keys) in enumerate(members):
                state, leased = replies[2 * index], replies[2 * index + 1]
                if isinstance(state, BaseException) or isinstance(leased, BaseException):
                    continue  # e.g. its slot is mid-migration: the next pass sees it again
                enqueued += await self._reap(raw, sid, keys, state, leased)
        # the next lease that will expire (one still in the future: those already past are
        # being taken over, or wait in the queue, and are looked at every interval)
        upcoming = await self.queue.zrangebyscore(
            self.keys.live, now_ms + 1, "+inf", start=0, num=1, withscores=True
        )
        self._next_deadline_ms = int(upcoming[0][1]) if upcoming else None
        REDIS_COMMAND_LATENCY.labels("reap").observe(time.perf_counter() - started)
        return enqueued

    async def _reap(
        self, raw: bytes, sid: str, keys: SessionKeys, state: list[Any], leased: int
    ) -> int:
        """Re-enqueue one expired session (1), or drop or close it (0)."""
        status, epoch_raw, starts_raw, request = state
        if status is None or status == b"closed":
            await self.queue.zrem(self.keys.live, raw)
            return 0
        if leased:
            return 0
        epoch_raw = epoch_raw or b"0"
        starts = int(starts_raw) if (starts_raw or b"").isdigit() else 0
        if not epoch_raw.isdigit() or len(epoch_raw) > 18:
            await self._give_up(
                keys, status, epoch_raw, f"its epoch {epoch_raw[:40]!r} is invalid", request
            )
            return 0
        if starts >= MAX_START_ATTEMPTS:
            await self._give_up(
                keys,
                status,
                epoch_raw,
                f"{starts} workers took it without getting it going (a worker died on it "
                "each time, see the workers' logs)",
                request,
            )
            return 0
        epoch = int(epoch_raw) + 1
        if await enqueue_session(self.queue, self.keys, sid, epoch):
            log.info("reaper: session %s lease expired; enqueued epoch %d", sid, epoch)
            return 1
        await self._unstick(sid, epoch)
        return 0

    async def _give_up(
        self,
        keys: SessionKeys,
        status: bytes,
        epoch_raw: bytes,
        why: str,
        request: bytes | None = None,
    ) -> None:
        """Close a session the reaper will not re-enqueue again, with an error that says why."""
        message = f"session {keys.session_id} could not be started: {why}"
        epoch = int(epoch_raw) if epoch_raw.isdigit() and len(epoch_raw) <= 18 else 0
        entries = _unstartable_entries(epoch, status, "start_failed", message, request=request)
        if await self.scripts.abandon(
            keys, epoch=epoch_raw, entries=entries, ttl_s=CLOSED_TTL_S, maxlen=OUTPUT_MAXLEN
        ):
            START_FAILURES.labels("attempts").inc()
            log.error("reaper: %s; closed it", message)
        await self.queue.zrem(self.keys.live, keys.session_id)

    async def _unstick(self, session_id: str, epoch: int) -> None:
        """The job for ``epoch`` exists: if a worker died between taking it and its lease,
        arq would keep it "in progress" for hours; free it so another worker runs it."""
        job_id = self.keys.job_id(session_id, epoch)
        in_progress = in_progress_key_prefix + job_id
        ttl_ms = await self.queue.pttl(in_progress)
        if ttl_ms is None or ttl_ms < 0 or self.arq is None:
            return
        age_s = self.arq.in_progress_timeout_s - ttl_ms / 1000
        if age_s > 2 * self.settings.lease_ttl_s:
            log.warning("reaper: job %s stuck in progress for %.1fs; freeing it", job_id, age_s)
            async with self.queue.pipeline(transaction=False) as pipe:
                pipe.delete(in_progress)
                pipe.zadd(self.keys.queue, {job_id: int(time.time() * 1000)})
                await pipe.execute()


def _unstartable_entries(
    epoch: int, status: bytes | None, code: str, message: str, *, request: bytes | None = None
) -> list[Fields]:
    """What a session that cannot be started says on its output stream: an ``error`` (not
    recoverable), the failed connect acknowledgement a connecting caller waits for (its ``ref``
    is the create request's id, as a successful one's would be), ``closed``."""
    ref = None
    if status != b"live":  # somebody may be waiting in connect()
        ref = request.decode(errors="replace") if request else CONNECT_REF
    rejected = RequestRejected(code, RuntimeFailure(message))
    return rejection_entries(ref, rejected, epoch=epoch, closed_reason=code)


def _replies(
    groups: dict[str, list[SessionRunner]], results: dict[str, list[Any] | BaseException]
) -> list[tuple[SessionRunner, Any]]:
    """Each runner with the reply to its renewal (or its group's exception)."""
    pairs: list[tuple[SessionRunner, Any]] = []
    for tag, members in groups.items():
        result = results[tag]
        if isinstance(result, BaseException):
            pairs += [(runner, result) for runner in members]
        else:
            pairs += zip(members, result, strict=True)
    return pairs


async def _session_job(ctx: dict[str, Any], session_id: str, epoch: int) -> None:
    runtime: WorkerRuntime = ctx["voicegrid"]
    await runtime.run_session(session_id, int(epoch), str(ctx["job_id"]))


def arq_worker(runtime: WorkerRuntime) -> Worker:
    """The arq ``Worker`` that runs ``runtime``'s session jobs (signals are ours, not arq's)."""
    settings = runtime.settings
    return Worker(
        functions=[func(_session_job, name=JOB_NAME, timeout=JOB_TIMEOUT_S, max_tries=1)],
        redis_pool=runtime.queue,
        queue_name=runtime.keys.queue,
        max_jobs=settings.max_sessions,
        job_timeout=JOB_TIMEOUT_S,
        keep_result=0,
        poll_delay=POLL_DELAY_S,
        max_tries=1,
        retry_jobs=False,
        handle_signals=False,
        health_check_interval=60,
        ctx={"voicegrid": runtime},
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
    )


async def run_worker(
    settings: WorkerSettings,
    *,
    stop_event: asyncio.Event,
    redis: ArqRedis | None = None,
    started: asyncio.Future[WorkerRuntime] | None = None,
) -> None:
    """Run a worker in this event loop until ``stop_event`` is set, then drain and return.

    ``redis`` replaces the client opened from ``settings.redis_url`` (tests, embedding);
    ``started`` is resolved with the runtime once the worker takes jobs.
    """
    runtime = WorkerRuntime(settings, redis=redis)
    stop = asyncio.create_task(stop_event.wait())
    # a signal is honoured in every state: also while Redis is unreachable at start-up (start
    # retries loading the scripts forever)
    starting = asyncio.create_task(runtime.start(), name="voicegrid-start")
    await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stopped before Redis at %s answered", settings.redis_url_redacted)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        stop.cancel()
        await runtime.close()
        return
    starting.result()
    worker = arq_worker(runtime)
    runtime.arq = worker
    runtime._apply_admission()  # overloaded already (a slow start): arq must not pull at all
    if started is not None and not started.done():
        started.set_result(runtime)
    main: asyncio.Task[None] | None = None
    backoff = Backoff(first=0.1)
    try:
        while not stop_event.is_set():
            main = asyncio.create_task(worker.main(), name="voicegrid-arq")
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                break
            error = None if main.cancelled() else main.exception()
            if error is None or not isinstance(error, REDIS_ERRORS):
                log.error("arq worker stopped: %r", error)
                break
            # arq's poll loop dies on a connection error; sessions keep running, so restart it
            runtime.health.failed(error)
            log.warning("arq poll failed (%s); restarting it", type(error).__name__)
            await asyncio.wait({stop}, timeout=backoff.next_delay())
        await runtime.drain()
        # sessions that just ended may still be returning from their arq job: let them finish
        # so arq records a result instead of a cancellation (not after a drain that timed out)
        if worker.tasks and not runtime.sessions:
            await asyncio.wait(list(worker.tasks.values()), timeout=CLOSE_STEP_S)
    finally:
        stop.cancel()
        worker.allow_pick_jobs = False
        await runtime.close(*([main] if main is not None else []), *worker.tasks.values())
