"""Fault suite, Redis: frozen (``DEBUG SLEEP``) and restarted without its data, on a private
``redis-server`` (never the shared one), under sequence-numbered caller audio.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from ingress.client import SESSION_LOST
from protocol import NotConnectedError
from providers.simulator import OpenAISimulator
from worker.settings import LEASE_TTL_S

from .faultkit import (  # noqa: F401 - fixtures are found by name
    SCRIPT,
    PrivateRedis,
    Talker,
    fault_ledger,
    finish,
    private_redis,
    record,
    summary,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _start(
    sim: Any, workers: Any, server: PrivateRedis, namespace: str, sessions: int, **env: str
) -> tuple[list[Any], list[Talker]]:
    pair = [
        workers("a", sim.url, REDIS_URL=server.url, **env),
        workers("b", sim.url, REDIS_URL=server.url, **env),
    ]
    await asyncio.gather(*(w.wait_ready() for w in pair))
    talkers = [await Talker.connected(server.url, namespace, i) for i in range(sessions)]
    await asyncio.gather(*(t.at("audio", within=20) for t in talkers))
    return pair, talkers


async def test_a_frozen_redis_loses_no_audio_and_every_worker_survives(
    workers: Any,
    namespace: str,
    private_redis: PrivateRedis,  # noqa: F811 - the fixture
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        pair, talkers = await _start(sim, workers, private_redis, namespace, 3)
        freeze_s = 3.5  # past the lease TTL, within the ingress's 5 s of buffered audio
        sleeper = private_redis.freeze(freeze_s)
        await asyncio.to_thread(sleeper.wait, 30)
        woke = time.monotonic()
        back = [await t.at("audio", after=woke, within=20) - woke for t in talkers]
        await asyncio.sleep(1.0)
        totals = await finish(sim, talkers, within=15)
        takeovers = [bool(t.of("reconnected")) for t in talkers].count(True)
        record(
            "redis_frozen_3.5s",
            sessions=len(talkers),
            audio_back_after_s=summary(back),
            takeovers=takeovers,
            **totals,
        )
        assert all(w.proc.poll() is None for w in pair)  # nobody died of it
        assert totals["lost"] == 0 and totals["reordered"] == 0, totals
        assert all(not t.of("closed") for t in talkers)


async def test_sigterm_is_honoured_while_redis_is_frozen(
    workers: Any,
    namespace: str,
    private_redis: PrivateRedis,  # noqa: F811 - the fixture
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        pair, talkers = await _start(
            sim, workers, private_redis, namespace, 2, VOICEGRID_DRAIN_TIMEOUT_S="3"
        )
        sleeper = private_redis.freeze(8)
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        for worker in pair:
            worker.signal(signal.SIGTERM)
        codes = [await w.wait_exit(within=15) for w in pair]
        took = time.monotonic() - signalled
        await asyncio.to_thread(sleeper.wait, 30)
        record("sigterm_redis_frozen", workers=len(pair), exit_s=round(took, 2), codes=codes)
        assert codes == [0, 0] and took < 3.0 + 0.5, took  # VOICEGRID_DRAIN_TIMEOUT_S=3
        for talker in talkers:
            await talker.stop()


async def test_a_redis_restart_without_data_ends_every_session_for_its_caller(
    workers: Any,
    namespace: str,
    private_redis: PrivateRedis,  # noqa: F811 - the fixture
) -> None:
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        pair, talkers = await _start(sim, workers, private_redis, namespace, 3)
        # a caller that sends nothing learns it from the session checks
        quiet = await Talker.connected(private_redis.url, namespace, 8, talking=False)
        restarted = time.monotonic()  # from the kill: the callers may know before it is back
        await private_redis.restart()
        ended = [await t.at("closed", after=restarted, within=15) - restarted for t in talkers]
        quiet_ended = await quiet.at("closed", after=restarted, within=15) - restarted
        assert quiet.of("error")[-1].code == SESSION_LOST
        for talker in talkers:
            errors = talker.of("error")
            assert errors and errors[-1].code == SESSION_LOST, errors
            assert not talker.client.connected
            with pytest.raises(NotConnectedError, match="is gone"):
                talker.client.send_audio(b"\x00" * 960)
            await talker.stop()
        await asyncio.sleep(1.5)  # anything still written by then is written
        redis = Redis.from_url(private_redis.url)
        try:
            leaked = [
                key
                async for key in redis.scan_iter(match=f"{namespace}:*")
                if await redis.pttl(key) == -1 and b":{" in key
            ]
            assert leaked == []  # no session key without an expiry
            assert all(w.proc.poll() is None for w in pair)
            # the workers carry on against the new, empty Redis: a new session works
            fresh = await Talker.connected(private_redis.url, namespace, 9)
            await fresh.at("audio", within=20)
            await fresh.stop()
            await fresh.client.disconnect()
        finally:
            await redis.aclose()
        record(
            "redis_restarted_empty",
            sessions=len(talkers),
            caller_told_after_s=summary(ended),
            silent_caller_told_after_s=round(quiet_ended, 2),
            leaked_keys=0,
        )
        assert max([*ended, quiet_ended]) < 2 * LEASE_TTL_S, (ended, quiet_ended)
