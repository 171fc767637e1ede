"""Session ownership: a short lease with an epoch, and writes fenced by it (docs/streams.md).

The lease of a session is the key ``<ns>:{<sid>}:lease`` holding ``"<epoch>:<worker id>"`` (the
*token*) with a PX time to live. Every write a worker makes for a session runs in a Lua script
that first compares the lease with the worker's token, so a worker that lost its lease (it was
paused past the TTL, partitioned, or replaced) cannot write: the check and the write are one
atomic step in Redis, not a read followed by a write.

- :data:`ACQUIRE` takes a free lease for epoch ``E`` only if the record's epoch is ``E - 1``, so
  exactly one job per epoch can own the session, however many were enqueued.
- :data:`RENEW` extends the lease (and the idle expiry of the session's keys), fenced.
- :data:`WRITE` appends output entries and updates record fields of many sessions in one call,
  each fenced by its own lease; it can also release a lease (hand-off) or close a session
  (expire its keys).

:data:`ACQUIRE` and :data:`RENEW` touch the keys of one session (one hash tag); :data:`WRITE`
touches the keys of the sessions it is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from protocol.keys import SessionKeys

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "RENEW",
    "WRITE",
    "Lease",
    "LeaseScripts",
    "SessionWrite",
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
redis.call('HINCRBY', KEYS[1], 'starts', 1)
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return {1, 'acquired'}
"""

# Close a session nobody owns (no lease) whose record still has the epoch the caller read: the
# reaper gives up on a session that never gets going. Writes the given output entries, sets
# status closed and expires the session's keys; 0 (nothing written) if anything changed.
# KEYS: state, lease, input, output. ARGV: epoch as read, close ttl ms, output maxlen, then
# entries as in WRITE (nf, then nf field/value pairs).
ABANDON = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'closed' then return 0 end
if (redis.call('HGET', KEYS[1], 'epoch') or '') ~= ARGV[1] then return 0 end
local i = 4
while i <= #ARGV do
  local nf = tonumber(ARGV[i])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, i + 1, i + 2 * nf))
  i = i + 1 + 2 * nf
end
redis.call('HSET', KEYS[1], 'status', 'closed')
for k = 1, 4 do if k ~= 2 then redis.call('PEXPIRE', KEYS[k], ARGV[2]) end end
return 1
"""

# KEYS: lease, input, output, state. ARGV: token, lease ttl ms, idle ttl ms, field/value pairs.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
if #ARGV > 3 then redis.call('HSET', KEYS[4], unpack(ARGV, 4, #ARGV)) end
return 1
"""

# Fenced writes of any number of sessions in one call (one script call per write round, not
# one per session; on Redis Cluster the caller groups sessions by slot).
# KEYS: per session i (from 0): lease, output, state, input at 4i+1 .. 4i+4.
# ARGV[1]: output maxlen; ARGV[2]: the entries' schema version (field `v`); then per session:
#   token, epoch, mode (0 keep, -1 release the lease, >0 close: expire keys after that many ms),
#   npairs, span (ARGVs after this one that belong to the session), the record field/value
#   pairs, then its entries, each either
#     0, ts, data, rate, response id ('' if none)   an audio event (5 instead of 17 arguments)
#     nf, then nf field/value pairs                  any other entry
# Returns per session two items: entries written (-1 when fenced: nothing written), last id.
WRITE = """
local maxlen = ARGV[1]
local version = ARGV[2]
local out = {}
local a = 3
local s = 0
while a <= #ARGV do
  local token, epoch, mode = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local npairs, span = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local lease, output, state = KEYS[4 * s + 1], KEYS[4 * s + 2], KEYS[4 * s + 3]
  local i = a + 5
  local stop = i + span
  if redis.call('GET', lease) ~= token then
    out[#out + 1] = -1
    out[#out + 1] = ''
  else
    if npairs > 0 then redis.call('HSET', state, unpack(ARGV, i, i + 2 * npairs - 1)) end
    i = i + 2 * npairs
    local n = 0
    local last = ''
    while i < stop do
      local nf = tonumber(ARGV[i])
      if nf == 0 then
        if ARGV[i + 4] == '' then
          last = redis.call('XADD', output, 'MAXLEN', '~', maxlen, '*', 'v', version,
            'ts', ARGV[i + 1], 'ep', epoch, 'k', 'e', 'e', 'audio', 'd', ARGV[i + 2],
            'sr', ARGV[i + 3])
        else
          last = redis.call('XADD', output, 'MAXLEN', '~', maxlen, '*', 'v', version,
            'ts', ARGV[i + 1], 'ep', epoch, 'k', 'e', 'e', 'audio', 'd', ARGV[i + 2],
            'sr', ARGV[i + 3], 'rid', ARGV[i + 4])
        end
        i = i + 5
      else
        last = redis.call('XADD', output, 'MAXLEN', '~', maxlen, '*',
          unpack(ARGV, i + 1, i + 2 * nf))
        i = i + 1 + 2 * nf
      end
      n = n + 1
    end
    if mode ~= 0 then redis.call('DEL', lease) end
    if mode > 0 then
      for k = 2, 4 do redis.call('PEXPIRE', KEYS[4 * s + k], mode) end
    end
    out[#out + 1] = n
    out[#out + 1] = last
  end
  a = stop
  s = s + 1
end
return out
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

    SOURCES = (ACQUIRE, RENEW, WRITE, ABANDON)

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.acquire_sha = _sha(ACQUIRE)
        self.renew_sha = _sha(RENEW)
        self.write_sha = _sha(WRITE)
        self.abandon_sha = _sha(ABANDON)

    async def abandon(
        self,
        keys: SessionKeys,
        *,
        epoch: bytes,
        entries: list[dict[str, Any]],
        ttl_s: float,
        maxlen: int,
    ) -> bool:
        """Close an unowned session whose record epoch is still ``epoch`` (raw, as read), writing
        ``entries`` to its output stream first; False if it changed meanwhile (owned, closed)."""
        args: list[Any] = [epoch, max(1, int(ttl_s * 1000)), maxlen]
        for entry in entries:
            args.append(len(entry))
            for name, value in entry.items():
                args += (name, value)
        names = (keys.state, keys.lease, keys.input, keys.output)
        try:
            reply = await self.redis.evalsha(self.abandon_sha, 4, *names, *args)  # type: ignore[misc]
        except NoScriptError:
            await self.load()
            reply = await self.redis.evalsha(self.abandon_sha, 4, *names, *args)  # type: ignore[misc]
        return int(reply) == 1

    async def load(self) -> None:
        """Load every script into the server's script cache (on a Redis Cluster: into every
        primary that answers; one that does not gets them at its next ``NOSCRIPT``, and a
        failing shard must not fail the callers, the writer and the renewer, for the others).
        Raises when no server took them."""
        if not isinstance(self.redis, RedisCluster):
            for source in self.SOURCES:
                await self.redis.script_load(source)
            return
        try:
            await self.redis.initialize()
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        loaded = 0
        failure: BaseException | None = None
        for node in self.redis.get_primaries():
            try:
                for source in self.SOURCES:
                    await self.redis.execute_command("SCRIPT LOAD", source, target_nodes=node)
                loaded += 1
            except (RedisError, RedisClusterException, OSError) as exc:
                failure = exc
        if not loaded:
            raise RedisConnectionError(f"no cluster primary took the scripts: {failure!r}")

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
        pipe.evalsha(*self.renew_command(lease, idle_ttl_s=idle_ttl_s, fields=fields)[1:])

    def renew_command(
        self, lease: Lease, *, idle_ttl_s: float, fields: dict[str, bytes] | None = None
    ) -> tuple[Any, ...]:
        """The fenced renewal of ``lease`` as a raw ``EVALSHA`` command (:meth:`queue_renew`)."""
        keys = lease.keys
        args: list[Any] = [lease.token, int(lease.ttl_s * 1000), int(idle_ttl_s * 1000)]
        for name, value in (fields or {}).items():
            args += [name, value]
        lk = (keys.lease, keys.input, keys.output, keys.state)
        return ("EVALSHA", self.renew_sha, len(lk), *lk, *args)

    def queue_write(
        self,
        pipe: Any,
        writes: Sequence[SessionWrite],
        *,
        maxlen: int,
        version: bytes,
    ) -> None:
        """Queue one fenced write of every session in ``writes`` on ``pipe``.

        Its reply holds two items per session, in order: ``-1, b""`` when that session was
        fenced (nothing of it written), else the number of entries written and the last id.
        """
        keys: list[Any] = []
        args: list[Any] = [maxlen, version]
        for write in writes:
            lease = write.lease
            lk = lease.keys
            keys += (lk.lease, lk.output, lk.state, lk.input)
            mode = write.mode
            if mode == "keep":
                mode_arg = 0
            elif mode == "release":
                mode_arg = -1
            else:
                mode_arg = max(1, int(write.close_ttl_s * 1000))
            body: list[Any] = []
            for name, value in write.fields.items():
                body += (name, value)
            for entry in write.entries:
                if entry.get("e") == "audio" and entry.get("k") == b"e":
                    body += (0, entry["ts"], entry["d"], entry["sr"], entry.get("rid", b""))
                else:
                    body.append(len(entry))
                    for name, value in entry.items():
                        body += (name, value)
            args += (lease.token, lease.epoch, mode_arg, len(write.fields), len(body))
            args += body
        pipe.evalsha(self.write_sha, len(keys), *keys, *args)


@dataclasses.dataclass(slots=True)
class SessionWrite:
    """One session's part of a fenced write round."""

    lease: Lease
    entries: list[dict[str, Any]]
    fields: dict[str, bytes]
    mode: WriteMode = "keep"
    close_ttl_s: float = 0.0
