"""A single-node Redis that Redis Sentinel fails over (``REDIS_URL=redis+sentinel://...``):
sessions end to end through the primary Sentinel names, and its ``SIGKILL`` mid-call (Sentinel
promotes the replica; the session goes on, new sessions start). Real ``redis-server`` processes
on loopback ports (a primary, a replica, one Sentinel with quorum 1), like the cluster suite
next to it, whose ``conftest.py`` makes CI fail when ``redis-server`` is missing. Measurements
are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress import RedisRealtimeClient
from protocol import ConfigError
from providers.simulator import OpenAISimulator, SimScript
from redisio.cluster import check_stores, open_stores
from redisio.settings import CommonSettings

from ...support.cluster import ReplicatedRedis
from ...support.timing import scaled
from ..runtime.conftest import Caller, Timeline, WorkerProcess, worker_env
from .test_cluster_sessions import config_for, flowing_again, lost_frames

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

SCRIPT = SimScript(reply_text="Sure, I can help with that.", speed=4.0)


@pytest.fixture
def sentinel_redis(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    servers = tmp_path / "redis"
    servers.mkdir()
    redis = ReplicatedRedis(servers, replicas=1, sentinels=1, service="vgtest").start()
    yield redis
    redis.stop()


async def test_a_session_survives_a_sentinel_failover_of_its_redis(
    sentinel_redis: ReplicatedRedis, tmp_path: Path
) -> None:
    namespace = f"vgsn-{uuid.uuid4().hex[:10]}"
    url = sentinel_redis.url
    assert url.startswith("redis+sentinel://")
    workers: list[WorkerProcess] = []
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        try:
            for name in ("a", "b"):
                workers.append(WorkerProcess(name, worker_env(url, namespace, sim.url), tmp_path))
            await asyncio.gather(*(w.wait_ready() for w in workers))

            def make(session_id: str | None = None) -> RedisRealtimeClient:
                return RedisRealtimeClient(
                    url,
                    provider="openai",
                    model="gpt-realtime",
                    session_id=session_id,
                    namespace=namespace,
                    connect_timeout_s=scaled(20),
                )

            sid = uuid.uuid4().hex
            client = make(sid)
            timeline = Timeline(client)
            await client.connect(config_for(sid))
            call = Caller(client)
            call.start()
            await timeline.wait("audio", within=15)
            await asyncio.sleep(0.5)

            old = sentinel_redis.primary
            marker = f"session {sid}"
            sent_at_kill = call.sent
            killed_at = time.monotonic()
            old.kill(signal.SIGKILL)
            # Sentinel: down after 1 s, then it promotes the replica
            async with asyncio.timeout(scaled(30)):
                while True:
                    try:
                        if await asyncio.to_thread(lambda: sentinel_redis.primary) is not old:
                            break
                    except RuntimeError:
                        pass
                    await asyncio.sleep(0.1)
            promoted_at = time.monotonic()
            flowing_at, audio_at = await flowing_again(
                sim, timeline, marker, sent_at_kill=sent_at_kill, promoted_at=promoted_at, within=30
            )
            await asyncio.sleep(1.0)
            await call.stop()
            sent = call.sent
            await asyncio.sleep(scaled(1))
            lost = lost_frames(sim, marker, sent)
            takeover = timeline.first("reconnected", after=killed_at)
            print(
                f"\nSentinel failover: replica promoted {promoted_at - killed_at:.2f}s after "
                f"SIGKILL, caller audio at the provider again {flowing_at - killed_at:.2f}s "
                f"after, model audio {audio_at - killed_at:.2f}s after; "
                f"{'a' if takeover else 'no'} takeover; caller frames: {sent} sent, "
                f"{len(lost)} lost {lost[:10]}"
            )
            assert await client.ping()
            # asynchronous replication: at most the last moments before the kill are lost
            assert len(lost) <= 10

            # the queue lives on the promoted primary too: a new session starts and talks
            fresh = make()
            fresh_timeline = Timeline(fresh)
            await fresh.connect(config_for("fresh"))
            fresh_call = Caller(fresh)
            fresh_call.start()
            await fresh_timeline.wait("audio", within=15)
            await fresh_call.stop()
            await asyncio.gather(client.disconnect(), fresh.disconnect())
        finally:
            for worker in workers:
                worker.stop()


async def test_a_sentinel_port_behind_a_plain_redis_url_is_named(
    sentinel_redis: ReplicatedRedis,
) -> None:
    """``REDIS_URL=redis://<a Sentinel>`` stops the process with one line naming the form to
    use, instead of failing on every command later."""
    port = sentinel_redis.sentinels[0].port
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "VOICEGRID_NAMESPACE": "vgsn"}
    settings = CommonSettings(**CommonSettings.redis_from_env(env))
    stores = open_stores(settings)
    try:
        with pytest.raises(ConfigError, match=r"points at a Redis Sentinel.*redis\+sentinel://"):
            await check_stores(stores, settings)
    finally:
        await stores.aclose()
