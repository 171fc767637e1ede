"""The provider circuit breaker every worker shares (``docs/operations.md``, "Provider failover").

One hash per provider target (``protocol.keys.Keys.provider_health``): ``failures`` within the
window that started at ``window_start``, and ``open_until`` (ms since the epoch; 0: closed).
``threshold`` failures within ``window_s`` open the breaker for ``cooldown_s``: every worker then
starts new sessions on the next target. After the cooldown it is half-open: one session at a
time (a ``SET NX PX`` probe token) may try the target; its success closes the breaker for the
fleet, its failure opens it again. Failures are counted in one Lua script, so concurrent
workers never lose a count. The clock is the workers' (ms), good enough for a cooldown of
seconds. Implements ``providers.fallback.ProviderHealth``.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from protocol.keys import Keys

from .metrics import PROVIDER_HEALTH

__all__ = ["STATES", "ProviderBreaker"]

#: the gauge value of each state
STATES = {"closed": 0, "half-open": 1, "open": 2}

FAILURE = """
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'failures', 'window_start', 'open_until')
local failures = tonumber(h[1]) or 0
local started = tonumber(h[2]) or 0
local open_until = tonumber(h[3]) or 0
if now - started > tonumber(ARGV[3]) then failures = 0; started = now end
failures = failures + 1
local half_open = open_until > 0 and now >= open_until
if failures >= tonumber(ARGV[2]) or half_open then open_until = now + tonumber(ARGV[4]) end
redis.call('HSET', KEYS[1], 'failures', failures, 'window_start', started,
           'open_until', open_until)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('DEL', KEYS[2])
if open_until == 0 then return 'closed' end
if now < open_until then return 'open' end
return 'half-open'
"""


class ProviderBreaker:
    """A circuit breaker per provider target, shared through Redis (module docstring)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        threshold: int = 3,
        window_s: float = 60.0,
        cooldown_s: float = 30.0,
        probe_timeout_s: float = 15.0,
    ) -> None:
        self.redis, self.keys = redis, keys
        self.threshold, self.window_s = threshold, window_s
        self.cooldown_s, self.probe_timeout_s = cooldown_s, probe_timeout_s
        self._failure = redis.register_script(FAILURE)

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    def _seen(self, label: str, state: str) -> str:
        PROVIDER_HEALTH.labels(label).set(STATES[state])
        return state

    async def state(self, label: str) -> str:
        raw: Any = await self.redis.hget(self.keys.provider_health(label), "open_until")  # type: ignore[misc]
        open_until = int(raw or 0)
        if open_until == 0:
            return self._seen(label, "closed")
        return self._seen(label, "open" if self._now_ms() < open_until else "half-open")

    async def allow(self, label: str) -> bool:
        state = await self.state(label)
        if state != "half-open":
            return state == "closed"
        probe = self.keys.provider_health(label) + ":probe"
        return bool(await self.redis.set(probe, b"1", nx=True, px=int(self.probe_timeout_s * 1000)))

    async def record_failure(self, label: str) -> str:
        key = self.keys.provider_health(label)
        args = [
            self._now_ms(),
            self.threshold,
            int(self.window_s * 1000),
            int(self.cooldown_s * 1000),
            int(max(self.window_s, self.cooldown_s) * 1000) + 3_600_000,
        ]
        reply = await self._failure(keys=[key, key + ":probe"], args=args)
        return self._seen(label, reply.decode() if isinstance(reply, bytes) else str(reply))

    async def record_success(self, label: str) -> None:
        key = self.keys.provider_health(label)
        await self.redis.delete(key, key + ":probe")
        self._seen(label, "closed")
