"""Claiming a session id for a create request, atomically (``docs/streams.md``).

:data:`CLAIM` writes a new session record only if none exists, tagged with the create request's
entry id (record field ``req``), and in the same step the output entries that answer a rejected
request. Run again for the same request (a worker died half-way and another one took the request
over) it writes nothing and says ``retry``; for another request it says ``taken``. The worker
handling ``<ns>:create`` uses it, and so does an ingress that gives up waiting (it claims the id
with a closed record, so a worker that gets to the request later does not start the session).

Both keys carry the session's hash tag: the script touches one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from protocol.create import REJECTED_MAXLEN, RequestRejected, encode_rejection
from protocol.keys import Keys, SessionKeys
from protocol.streams import OUTPUT_MAXLEN, Fields

__all__ = ["CLAIM", "ClaimOutcome", "claim_session", "publish_rejection"]

# KEYS: state, output. ARGV: request id, ttl ms, output maxlen, npairs, the record's field/value
# pairs, then output entries (nf, then nf field/value pairs) answering the request.
# Returns {outcome, status}: outcome 'created', 'retry' (this request made the record before) or
# 'taken' (another request or client did); status the record's status ('' when it has none).
CLAIM = """
local req = redis.call('HGET', KEYS[1], 'req')
if req or redis.call('EXISTS', KEYS[1]) == 1 then
  local status = redis.call('HGET', KEYS[1], 'status') or ''
  if req == ARGV[1] then return {'retry', status} end
  return {'taken', status}
end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'req', ARGV[1], unpack(ARGV, 5, 4 + 2 * n))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local i = 5 + 2 * n
if i <= #ARGV then
  while i <= #ARGV do
    local nf = tonumber(ARGV[i])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, i + 1, i + 2 * nf))
    i = i + 1 + 2 * nf
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {'created', redis.call('HGET', KEYS[1], 'status') or ''}
"""
_CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest()

ClaimOutcome = Literal["created", "retry", "taken"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def claim_session(
    redis: Redis,
    keys: SessionKeys,
    request_id: str,
    record: Mapping[str, bytes],
    *,
    ttl_s: float,
    replies: Sequence[Fields] = (),
) -> tuple[ClaimOutcome, str]:
    """Write ``record`` (plus ``req=request_id``) unless the session exists, and ``replies`` to
    its output stream; keys expire after ``ttl_s``. Returns (outcome, the record's status)."""
    args: list[Any] = [request_id, int(ttl_s * 1000), OUTPUT_MAXLEN, len(record)]
    for name, value in record.items():
        args += (name, value)
    for entry in replies:
        args.append(len(entry))
        for name, field in entry.items():
            args += (name, field)
    try:
        reply = await redis.evalsha(_CLAIM_SHA, 2, keys.state, keys.output, *args)  # type: ignore[misc]
    except NoScriptError:
        reply = await redis.eval(CLAIM, 2, keys.state, keys.output, *args)  # type: ignore[misc]
    outcome, status = _text(reply[0]), _text(reply[1])
    assert outcome in ("created", "retry", "taken"), outcome
    return outcome, status  # type: ignore[return-value]


async def publish_rejection(
    redis: Redis,
    keys: Keys,
    request_id: str,
    raw_sid: bytes | str | None,
    rejected: RequestRejected,
) -> None:
    """Answer a request that has no output stream of its own on ``<ns>:create:rejected``."""
    await redis.xadd(
        keys.create_rejected,
        encode_rejection(request_id, raw_sid, rejected),  # type: ignore[arg-type]
        maxlen=REJECTED_MAXLEN,
        approximate=True,
    )
