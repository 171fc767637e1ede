"""Fixtures of the redisio unit tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.asyncio import Redis


@pytest.fixture(params=["fake", "real"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """The same test on fakeredis and on the real Redis at ``REDIS_URL`` (Lua scripts behave
    alike on both, which is what these tests pin)."""
    if request.param == "fake":
        client: Redis = fakeredis.FakeAsyncRedis()
    else:
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("needs a real Redis: set REDIS_URL to run (CI does)")
        client = Redis.from_url(url)
    yield client
    await client.aclose()
