"""``redisio.health.ProviderBreaker``: the Lua failure script and the probe token, shared by two
workers (two breaker instances on one Redis), against fakeredis and, when ``REDIS_URL`` is set,
the real Redis (CI sets it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from protocol.keys import Keys
from redisio.health import ProviderBreaker

LABEL = "gemini/gemini-live"
COOLDOWN_S = 0.3


@pytest.fixture
async def keys(redis: Redis) -> AsyncIterator[Keys]:
    keys = Keys(f"t-{uuid.uuid4().hex[:8]}")
    yield keys
    key = keys.provider_health(LABEL)
    await redis.delete(key, key + ":probe")


def workers(redis: Redis, keys: Keys, **kw: float) -> tuple[ProviderBreaker, ProviderBreaker]:
    options = {"threshold": 3, "window_s": 60.0, "cooldown_s": COOLDOWN_S, **kw}
    return ProviderBreaker(redis, keys, **options), ProviderBreaker(redis, keys, **options)  # type: ignore[arg-type]


async def test_failures_of_two_workers_open_it_for_both(redis: Redis, keys: Keys) -> None:
    w1, w2 = workers(redis, keys)
    assert await w1.record_failure(LABEL) == "closed"
    assert await w2.record_failure(LABEL) == "closed"
    assert await w1.allow(LABEL) and await w2.allow(LABEL)
    assert await w2.record_failure(LABEL) == "open"  # the third, from either worker
    assert (await w1.state(LABEL), await w2.state(LABEL)) == ("open", "open")
    assert not await w1.allow(LABEL) and not await w2.allow(LABEL)
    ttl = await redis.pttl(keys.provider_health(LABEL))
    assert ttl > 3_600_000  # the hash outlives the window and the cooldown


async def test_concurrent_failures_are_never_lost(redis: Redis, keys: Keys) -> None:
    w1, w2 = workers(redis, keys, threshold=100)
    await asyncio.gather(*(w.record_failure(LABEL) for _ in range(20) for w in (w1, w2)))
    assert await redis.hget(keys.provider_health(LABEL), "failures") == b"40"
    assert await w1.state(LABEL) == "closed"


async def test_failures_outside_the_window_start_a_new_count(redis: Redis, keys: Keys) -> None:
    w1, w2 = workers(redis, keys, window_s=0.2)
    await w1.record_failure(LABEL)
    await w2.record_failure(LABEL)
    await asyncio.sleep(0.3)
    assert await w1.record_failure(LABEL) == "closed"
    assert await redis.hget(keys.provider_health(LABEL), "failures") == b"1"


async def test_half_open_lets_one_probe_at_a_time_and_a_success_closes(
    redis: Redis, keys: Keys
) -> None:
    w1, w2 = workers(redis, keys, threshold=1, probe_timeout_s=0.4)
    assert await w1.record_failure(LABEL) == "open"
    await asyncio.sleep(COOLDOWN_S + 0.05)
    assert (await w1.state(LABEL), await w2.state(LABEL)) == ("half-open", "half-open")
    # one probe for the fleet, concurrent asks included
    allowed = await asyncio.gather(*(w.allow(LABEL) for _ in range(5) for w in (w1, w2)))
    assert allowed.count(True) == 1
    # the probe fails: open again for a full cooldown, and the token is gone
    assert await w2.record_failure(LABEL) == "open"
    assert not await w1.allow(LABEL)
    assert await redis.exists(keys.provider_health(LABEL) + ":probe") == 0
    await asyncio.sleep(COOLDOWN_S + 0.05)
    assert await w2.allow(LABEL) and not await w1.allow(LABEL)
    # a probe that never reports frees its token after probe_timeout_s
    await asyncio.sleep(0.45)
    assert await w1.allow(LABEL) and not await w2.allow(LABEL)
    # the probe connects: closed for every worker, no probe token left
    await w1.record_success(LABEL)
    assert (await w1.state(LABEL), await w2.state(LABEL)) == ("closed", "closed")
    assert await w1.allow(LABEL) and await w2.allow(LABEL) and await w2.allow(LABEL)
    assert await redis.exists(keys.provider_health(LABEL)) == 0
