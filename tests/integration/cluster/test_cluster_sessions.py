"""Sessions on a real Redis Cluster (3 primaries, 3 replicas) with the queue on its own Redis:
end to end over every shard, a live reshard mid-call, the SIGKILL takeover of a worker, and a
primary killed mid-call (its replica takes over). Measurements are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol import AudioFormat, RealtimeSessionConfig
from protocol.keys import Keys, key_slot
from providers.simulator import OpenAISimulator, SimScript
from redisio.cluster import open_cluster

from ...support.timing import scaled
from ..runtime.conftest import Caller, Timeline, check_every_frame_arrived, frames_seen
from .conftest import BUCKETS, ClusterSetup, session_in_bucket, start_cluster_call

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

CONFIG = RealtimeSessionConfig(
    instructions="You are a helpful agent.",
    input_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
    output_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
)
SCRIPT = SimScript(reply_text="Sure, I can help with that.", speed=4.0)


def config_for(session_id: str | None) -> RealtimeSessionConfig:
    """``CONFIG`` with instructions naming the session (to tell provider connections apart)."""
    return CONFIG.model_copy(update={"instructions": f"session {session_id}"})


def frames_of(sim: Any, marker: str) -> list[int]:
    """The caller frames of the provider connections whose instructions contain ``marker``."""
    seqs: list[int] = []
    for conn in sim.connections:
        if any(marker in str(frame.get("session", {})) for frame in conn.received):
            seqs += frames_seen(conn.audio_in)
    return seqs


async def flowing_again(
    sim: Any,
    timeline: Timeline,
    marker: str,
    *,
    sent_at_kill: int,
    promoted_at: float,
    within: float,
) -> tuple[float, float]:
    """After a Redis failover: when caller audio reached the provider again (5 frames past
    ``sent_at_kill``) and when the caller heard model audio again (monotonic times)."""
    await sim.wait_for(
        lambda s: max(frames_of(s, marker), default=-1) >= sent_at_kill + 5,
        timeout=scaled(within),
    )
    flowing_at = time.monotonic()
    audio_at, _ = await timeline.wait("audio", after=promoted_at, within=within)
    return flowing_at, audio_at


def lost_frames(sim: Any, marker: str, sent: int) -> list[int]:
    """The caller frames of ``marker``'s session that no provider connection received."""
    return sorted(set(range(sent)) - set(frames_of(sim, marker)))


#: docs/operations.md (A worker crashes): lease TTL + a reaper interval + the provider reconnect.
TAKEOVER_PROMISE_S = 5.0


def _tag_primary(setup: ClusterSetup, tag: str) -> int:
    return setup.cluster.primary_of("{" + tag + "}").port


async def test_sessions_run_end_to_end_on_every_shard(
    shared_cluster: ClusterSetup,
    start_workers: Any,
    make_cluster_client: Any,
    namespace: str,
) -> None:
    setup = shared_cluster
    keys = Keys(namespace, BUCKETS)
    # two sessions on each primary (buckets 0-7, 8-15 and 16-23 split evenly over three)
    buckets = [0, 5, 9, 14, 18, 23]
    assert len({_tag_primary(setup, keys.bucket_tag(b)) for b in buckets}) == 3
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        workers = [start_workers("a", setup, sim.url), start_workers("b", setup, sim.url)]
        await asyncio.gather(*(w.wait_ready() for w in workers))
        clients = [make_cluster_client(setup, session_in_bucket(b)) for b in buckets]
        timelines = [Timeline(c) for c in clients]
        await asyncio.gather(*(c.connect(config_for(c.session_id)) for c in clients))
        calls = [Caller(c) for c in clients]
        for call in calls:
            call.start()
        await asyncio.gather(*(t.wait("audio", within=15) for t in timelines))
        assert all(await asyncio.gather(*(c.ping() for c in clients)))
        for call in calls:
            await call.stop()
        for client, call in zip(clients, calls, strict=True):
            # every session's frames reached its own provider connection, in order, once
            marker = f"session {client.session_id}"
            await sim.wait_for(
                lambda s, m=marker, n=call.sent: len(frames_of(s, m)) >= n, timeout=scaled(10)
            )
            seqs = frames_of(sim, marker)
            assert seqs == list(range(call.sent))
        # session keys on the cluster, in their buckets; the queue's keys on the queue Redis
        cluster = open_cluster(setup.url)
        queue = Redis.from_url(setup.queue_url)
        try:
            for client, bucket in zip(clients, buckets, strict=True):
                session = keys.session(client.session_id)
                assert session.tag == keys.bucket_tag(bucket)
                assert await cluster.exists(session.input, session.output, session.state) == 3
                assert await queue.exists(session.state) == 0
            assert await queue.zcard(keys.live) == len(clients)
            assert await queue.exists(keys.create) == 1
            assert not [k async for k in cluster.scan_iter(match=f"{namespace}:live*")]
        finally:
            await cluster.aclose()
            await queue.aclose()
        await asyncio.gather(*(c.disconnect() for c in clients))
        print(f"\ncluster end to end: {len(clients)} sessions over 3 primaries, all frames once")


async def test_sigkill_of_a_worker_is_taken_over_on_a_cluster(
    shared_cluster: ClusterSetup,
    start_workers: Any,
    make_cluster_client: Any,
    namespace: str,
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, owner, timeline, call, pair = await start_cluster_call(
            shared_cluster, sim, start_workers, make_cluster_client, namespace, CONFIG
        )
        killed_at = time.monotonic()
        owner.signal(signal.SIGKILL)
        reconnected_at, event = await timeline.wait("reconnected", after=killed_at, within=15)
        assert event.reason == "takeover" and event.strategy == "replayed"
        await timeline.wait("audio", after=reconnected_at, within=15)
        await call.stop()
        seqs = await check_every_frame_arrived(sim, call.sent, frames_seen)
        took = reconnected_at - killed_at
        print(f"\ncluster SIGKILL takeover: reconnected {took:.2f}s after the kill")
        assert set(seqs) >= set(range(call.sent))
        assert took < scaled(TAKEOVER_PROMISE_S)
        survivor = next(w for w in pair if w is not owner)
        assert await survivor.metric("voicegrid_takeovers_total", reason="lease_expired") == 1
        await client.disconnect()


async def test_a_live_reshard_moves_a_sessions_slot_mid_call(
    shared_cluster: ClusterSetup,
    start_workers: Any,
    make_cluster_client: Any,
    namespace: str,
) -> None:
    setup = shared_cluster
    keys = Keys(namespace, BUCKETS)
    sid = session_in_bucket(0)
    tag = keys.bucket_tag(0)
    slot = key_slot(tag)
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, _, timeline, call, pair = await start_cluster_call(
            setup, sim, start_workers, make_cluster_client, namespace, CONFIG, session_id=sid
        )
        source = setup.cluster.primary_of("{" + tag + "}")
        target = next(n for n in setup.cluster.primary_nodes() if n is not source)
        first = _first_slot(source)
        moved = slot - first + 1  # redis-cli moves the source's lowest slots first
        started = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run,
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{source.port}",
                "--cluster-from",
                setup.cluster.node_id(source),
                "--cluster-to",
                setup.cluster.node_id(target),
                "--cluster-slots",
                str(moved),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout[-2000:]
        assert setup.cluster.primary_of("{" + tag + "}") is target
        # the call goes on: model audio after the move, nothing lost, no takeover
        await timeline.wait("audio", after=time.monotonic(), within=15)
        await call.stop()
        seqs = await check_every_frame_arrived(sim, call.sent, frames_seen)
        assert set(seqs) >= set(range(call.sent))
        assert len(seqs) == len(set(seqs))  # one owner throughout: nothing sent twice
        assert not timeline.first("reconnecting")
        assert await client.ping()
        for worker in pair:
            assert await worker.metric("voicegrid_takeovers_total", reason="lease_expired") == 0
        print(
            f"\nlive reshard: {moved} slots (the session's among them) moved in {took:.2f}s "
            f"mid-call; {call.sent} caller frames, none lost or repeated, no takeover"
        )
        await client.disconnect()


def _first_slot(node: Any) -> int:
    mine = next(
        line for line in node.cli("cluster", "nodes").splitlines() if "myself" in line.split()[2]
    )
    return min(int(part.split("-")[0]) for part in mine.split()[8:] if part[0].isdigit())


async def test_a_primary_killed_mid_call_fails_over_to_its_replica(
    fresh_cluster: ClusterSetup,
    start_workers: Any,
    make_cluster_client: Any,
    namespace: str,
) -> None:
    setup = fresh_cluster
    keys = Keys(namespace, BUCKETS)
    sid = session_in_bucket(3)
    other = session_in_bucket(12)  # on another shard: must not notice anything
    tag = keys.bucket_tag(3)
    assert _tag_primary(setup, tag) != _tag_primary(setup, keys.bucket_tag(12))
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        client, _, timeline, call, _pair = await start_cluster_call(
            setup,
            sim,
            start_workers,
            make_cluster_client,
            namespace,
            config_for(sid),
            session_id=sid,
        )
        bystander = make_cluster_client(setup, other)
        bystander_timeline = Timeline(bystander)
        await bystander.connect(config_for(other))
        bystander_call = Caller(bystander)
        bystander_call.start()
        await asyncio.sleep(1.0)

        primary = setup.cluster.primary_of("{" + tag + "}")
        marker = f"session {sid}"
        killed_at = time.monotonic()
        sent_at_kill = call.sent
        bystander_marker = f"session {other}"
        bystander_at_kill = len(frames_of(sim, bystander_marker))
        primary.kill(signal.SIGKILL)
        # the replica is promoted after cluster-node-timeout (1 s) and an election
        async with asyncio.timeout(scaled(20)):
            while (  # noqa: ASYNC110 - the cluster reports its failover only when asked
                await asyncio.to_thread(setup.cluster.primary_of, "{" + tag + "}") is primary
            ):
                await asyncio.sleep(0.05)
        promoted_at = time.monotonic()
        # meanwhile the session on a healthy shard kept flowing (its frames arrive in real time)
        bystander_during = len(frames_of(sim, bystander_marker)) - bystander_at_kill
        due = (promoted_at - killed_at) / 0.02
        # caller audio flows again once the ingress and the worker reach the new primary
        flowing_at, audio_at = await flowing_again(
            sim, timeline, marker, sent_at_kill=sent_at_kill, promoted_at=promoted_at, within=20
        )
        await asyncio.sleep(1.0)
        await call.stop()
        await bystander_call.stop()
        sent = call.sent

        # what the failover lost: caller frames Redis acknowledged that no provider got, and
        # model audio the provider sent that never reached the caller (async replication)
        await asyncio.sleep(scaled(2))
        lost = lost_frames(sim, marker, sent)
        deltas = sum(
            1
            for conn in sim.connections
            if any(marker in str(f.get("session", {})) for f in conn.received)
            for f in conn.sent
            if f.get("type") == "response.output_audio.delta"
        )
        heard = sum(1 for _, name, _ in timeline.events if name == "audio")
        takeover = timeline.first("reconnected", after=killed_at)
        print(
            f"\nprimary failover: replica promoted {promoted_at - killed_at:.2f}s after SIGKILL, "
            f"caller audio at the provider again {flowing_at - killed_at:.2f}s after, model "
            f"audio {audio_at - killed_at:.2f}s after; {'a' if takeover else 'no'} takeover; "
            f"caller frames: {sent} sent, {len(lost)} lost {lost[:10]}; model audio deltas: "
            f"{deltas} sent by the provider, {heard} heard; the session on another shard "
            f"got {bystander_during} of {due:.0f} frames meanwhile"
        )
        # the session goes on; at most the last moments before the kill are lost
        assert await client.ping()
        assert len(lost) <= 10
        # the session on the healthy shard noticed nothing: no takeover, every frame arrived
        assert await bystander.ping()
        assert not bystander_timeline.first("reconnecting")
        assert bystander_during >= due - 25  # at most half a second behind
        bystander_frames = frames_of(sim, f"session {other}")
        assert set(bystander_frames) >= set(range(bystander_call.sent))
        await asyncio.gather(client.disconnect(), bystander.disconnect())
