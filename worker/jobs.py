"""The arq side shared by the ingress and the worker: the Redis client and the session job.

Kept apart from :mod:`worker.runtime` so the ingress can enqueue session jobs without importing
the worker. Job payloads are JSON (orjson), not arq's default pickle, so a job read from Redis
can never execute code.
"""

from __future__ import annotations

from typing import Any

import orjson
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from protocol.keys import Keys

from .resp import fast_packing

__all__ = ["JOB_NAME", "enqueue_session", "open_redis"]

#: The arq function name of a session job: ``run_session(session_id, epoch)``.
JOB_NAME = "run_session"


def open_redis(url: str, *, queue: str) -> ArqRedis:
    """An arq-capable Redis client for ``url`` (``redis://``, ``rediss://`` with TLS,
    ``unix://``; password and db number in the URL)."""
    options: dict[str, Any] = {"socket_connect_timeout": 5.0, "health_check_interval": 10}
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only; unix sockets reject the option
    pool = ConnectionPool.from_url(url, **options)
    # same connection kind (TCP, TLS, unix socket), with linear-time command packing
    pool.connection_class = fast_packing(pool.connection_class)
    return ArqRedis(
        pool,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        default_queue_name=queue,
    )


async def enqueue_session(redis: ArqRedis, keys: Keys, session_id: str, epoch: int) -> bool:
    """Enqueue the job that owns ``session_id`` for ``epoch``; False if it already exists.

    The job id is deterministic per session epoch (``Keys.job_id``), so racing enqueuers (the
    ingress, every worker's reaper, a draining worker) create one job at most.
    """
    job = await redis.enqueue_job(
        JOB_NAME,
        session_id,
        epoch,
        _job_id=keys.job_id(session_id, epoch),
        _queue_name=keys.queue,
    )
    return job is not None
