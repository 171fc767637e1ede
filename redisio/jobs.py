"""The session job: its arq function name and how to enqueue it (ingress, reapers, drains).

The job id is deterministic per session epoch (``Keys.job_id``), so racing enqueuers create one
job at most.
"""

from __future__ import annotations

from arq.connections import ArqRedis

from protocol.keys import Keys

__all__ = ["JOB_NAME", "enqueue_session"]

#: The arq function name of a session job: ``run_session(session_id, epoch)``.
JOB_NAME = "run_session"


async def enqueue_session(redis: ArqRedis, keys: Keys, session_id: str, epoch: int) -> bool:
    """Enqueue the job that owns ``session_id`` for ``epoch``; False if it already exists."""
    job = await redis.enqueue_job(
        JOB_NAME,
        session_id,
        epoch,
        _job_id=keys.job_id(session_id, epoch),
        _queue_name=keys.queue,
    )
    return job is not None
