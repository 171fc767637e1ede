"""Session ownership: a short lease with an epoch, and writes fenced by it (ARCHITECTURE §4.5).

The lease of a session is the key ``<ns>:{<sid>}:lease`` holding ``"<epoch>:<worker id>"`` (the
*token*) with a PX time to live. Every write a worker makes for a session runs in a Lua script
that first compares the lease with the worker's token, so a worker that lost its lease (it was
paused past the TTL, partitioned, or replaced) cannot write: the check and the write are one
atomic step in Redis, not a read followed by a write.

- :data:`ACQUIRE` takes a free lease for epoch ``E`` only if the record's epoch is ``E - 1``, so
  exactly one job per epoch can own the session, however many were enqueued.
- :data:`RENEW` extends the lease (and the idle expiry of the session's keys), fenced.
- :data:`WRITE` appends output entries and updates record fields, fenced; it can also release
  the lease (hand-off) or close the session (expire its keys).

Every script touches only keys of one session (one hash tag), so it is legal on Redis Cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from protocol.keys import SessionKeys

__all__ = [
    "ACQUIRE",
    "RENEW",
    "WRITE",
    "Lease",
    "LeaseScripts",
    "WriteMode",
]

ACQUIRE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'missing'} end
if status == 'closed' then return {0, 'closed'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 'held'} end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
local want = tonumber(ARGV[1])
if want ~= epoch + 1 then return {0, 'stale'} end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'owner', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return {1, 'acquired'}
"""

# KEYS: lease, input, output, state. ARGV: token, lease ttl ms, idle ttl ms, field/value pairs.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
if #ARGV > 3 then redis.call('HSET', KEYS[4], unpack(ARGV, 4, #ARGV)) end
return 1
"""

# KEYS: lease, output, state, input.
# ARGV: token, output maxlen, mode (0 keep, -1 release the lease, >0 close: expire keys after
# that many ms), n record pairs, the pairs, then per entry: n field pairs, the pairs.
# Returns {-1, ''} when fenced, else {entries written, last entry id}.
WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, ''} end
local npairs = tonumber(ARGV[4])
if npairs > 0 then redis.call('HSET', KEYS[3], unpack(ARGV, 5, 4 + 2 * npairs)) end
local i = 5 + 2 * npairs
local n = 0
local last = ''
while i <= #ARGV do
  local nf = tonumber(ARGV[i])
  last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 1, i + 2 * nf))
  n = n + 1
  i = i + 1 + 2 * nf
end
local mode = tonumber(ARGV[3])
if mode ~= 0 then redis.call('DEL', KEYS[1]) end
if mode > 0 then
  for k = 2, 4 do redis.call('PEXPIRE', KEYS[k], mode) end
end
return {n, last}
"""

#: What a fenced write does with the lease after writing.
WriteMode = Literal["keep", "release", "close"]


@dataclasses.dataclass(slots=True)
class Lease:
    """A lease this worker holds on one session for one epoch."""

    keys: SessionKeys
    epoch: int
    worker_id: str
    ttl_s: float
    #: ``time.monotonic()`` until which the lease is certainly still ours (renewal sent + TTL
    #: minus a margin); past it the worker stops handing input to the provider until renewed.
    valid_until: float = 0.0

    @property
    def token(self) -> str:
        return f"{self.epoch}:{self.worker_id}"

    def renewed(self, sent_at: float) -> None:
        """Record a successful renewal whose command was sent at ``sent_at`` (monotonic)."""
        self.valid_until = sent_at + self.ttl_s * 0.8

    def locally_valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.valid_until


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class LeaseScripts:
    """The lease and fenced-write scripts, called by SHA.

    Pipelined calls use ``EVALSHA`` directly (redis-py's ``Script`` objects would add a
    ``SCRIPT EXISTS`` round trip to every pipeline); :meth:`load` (re)loads the scripts at
    start-up and whenever a reply says ``NOSCRIPT`` (a restarted or failed-over Redis).
    """

    SOURCES = (ACQUIRE, RENEW, WRITE)

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.acquire_sha = _sha(ACQUIRE)
        self.renew_sha = _sha(RENEW)
        self.write_sha = _sha(WRITE)

    async def load(self) -> None:
        """Load every script into the server's script cache."""
        for source in self.SOURCES:
            await self.redis.script_load(source)

    async def acquire(
        self, keys: SessionKeys, *, epoch: int, worker_id: str, ttl_s: float
    ) -> tuple[Lease | None, str]:
        """Take the lease for ``epoch``; returns (lease, "acquired") or (None, why not)."""
        args: list[Any] = [keys.state, keys.lease, epoch, worker_id, int(ttl_s * 1000)]
        sent = time.monotonic()
        try:
            reply = await self.redis.evalsha(self.acquire_sha, 2, *args)  # type: ignore[misc]
        except NoScriptError:
            await self.load()
            reply = await self.redis.evalsha(self.acquire_sha, 2, *args)  # type: ignore[misc]
        ok, why = reply
        reason = why.decode() if isinstance(why, bytes) else str(why)
        if int(ok) != 1:
            return None, reason
        lease = Lease(keys=keys, epoch=epoch, worker_id=worker_id, ttl_s=ttl_s)
        lease.renewed(sent)
        return lease, reason

    def queue_renew(
        self, pipe: Any, lease: Lease, *, idle_ttl_s: float, fields: dict[str, bytes] | None = None
    ) -> None:
        """Queue a fenced renewal of ``lease`` (and set record ``fields``) on pipeline ``pipe``.

        Its reply is 1 (renewed) or 0 (fenced: the lease is no longer this token).
        """
        keys = lease.keys
        args: list[Any] = [lease.token, int(lease.ttl_s * 1000), int(idle_ttl_s * 1000)]
        for name, value in (fields or {}).items():
            args += [name, value]
        pipe.evalsha(self.renew_sha, 4, keys.lease, keys.input, keys.output, keys.state, *args)

    def queue_write(
        self,
        pipe: Any,
        lease: Lease,
        *,
        entries: list[dict[str, Any]],
        fields: dict[str, bytes] | None = None,
        maxlen: int,
        mode: WriteMode = "keep",
        close_ttl_s: float = 0.0,
    ) -> None:
        """Queue a fenced write on ``pipe``: output ``entries`` appended, record ``fields`` set.

        Its reply is ``[-1, b""]`` when fenced, else ``[entries written, last entry id]``.
        """
        mode_arg = {"keep": 0, "release": -1}.get(mode, max(1, int(close_ttl_s * 1000)))
        record = fields or {}
        args: list[Any] = [lease.token, maxlen, mode_arg, len(record)]
        for name, value in record.items():
            args += [name, value]
        for entry in entries:
            args.append(len(entry))
            for name, value in entry.items():
                args += [name, value]
        keys = lease.keys
        pipe.evalsha(self.write_sha, 4, keys.lease, keys.output, keys.state, keys.input, *args)
