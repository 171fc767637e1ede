"""Short-lived, single-use media tokens: what a phone or browser leg shows the gateway.

The application's backend keeps the control plane (it creates the session, answers tool calls);
a media leg (Twilio, Telnyx, the browser page) only carries audio, and proves it may do so for
one session with a token the backend minted::

    vgm1.<base64url JSON {"sid": session id, "exp": unix seconds, "jti": token id}>.<base64url HMAC>

- **Bound to one session**: ``sid`` is signed, so a token for one call cannot attach to another.
- **Short-lived**: ``exp`` is at most :data:`MAX_TTL_S` ahead (default :data:`DEFAULT_TTL_S`).
- **Single use**: the gateway marks ``jti`` used with ``SET NX`` in Redis (key
  ``<ns>:{<sid>}:mt:<jti>``, expiring with the token), so a replayed token is refused by every
  gateway replica.
- **HMAC-SHA256** with a secret shared by the backend and the gateways
  (``VOICEGRID_MEDIA_TOKEN_SECRET``): a backend that uses ``RedisRealtimeClient`` mints with
  :func:`mint_media_token` without asking the gateway; one that speaks to the gateway asks
  ``POST /v1/sessions/{id}/media-token`` with the service token.

Tokens are secrets: nothing here puts one in an exception message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import secrets
import time

import orjson
from redis.asyncio import Redis

from protocol import InvalidSessionId, UsageError
from protocol.keys import Keys, validate_session_id
from redisio.connection import REDIS_ERRORS

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "MIN_SECRET_BYTES",
    "MediaClaims",
    "MediaTokenError",
    "consume_media_token",
    "mint_media_token",
    "verify_media_token",
]

#: Seconds a token stays valid unless the minter asks otherwise.
DEFAULT_TTL_S = 60.0
#: Longest lifetime a token may have (a demo page opened by hand needs minutes, a phone seconds).
MAX_TTL_S = 3600.0
#: Shortest secret accepted: 32 bytes, the size of the HMAC-SHA256 output.
MIN_SECRET_BYTES = 32
_PREFIX = "vgm1"
_MAX_TOKEN_CHARS = 512


class MediaTokenError(UsageError):
    """A media token refused; ``reason`` is ``malformed``, ``bad_signature``, ``expired``,
    ``wrong_session``, ``used`` or ``unavailable`` (Redis down). The message never quotes the
    token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class MediaClaims:
    """What a valid token grants: media for ``session_id`` until ``expires_at`` (unix s)."""

    session_id: str
    expires_at: float
    token_id: str


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise MediaTokenError(
            "malformed",
            f"the media token secret has {len(key)} bytes; expected at least {MIN_SECRET_BYTES} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')",
        )
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())


def mint_media_token(
    secret: str | bytes, session_id: str, *, ttl_s: float = DEFAULT_TTL_S, now: float | None = None
) -> str:
    """A token that lets one media leg attach to ``session_id`` once within ``ttl_s`` seconds."""
    sid = validate_session_id(session_id)
    if not 0 < ttl_s <= MAX_TTL_S:
        raise MediaTokenError(
            "malformed", f"ttl_s={ttl_s!r}; expected more than 0 and at most {MAX_TTL_S:g} seconds"
        )
    issued = time.time() if now is None else now
    claims = {"sid": sid, "exp": int(issued + ttl_s), "jti": secrets.token_hex(16)}
    body = _b64(orjson.dumps(claims))
    signed = f"{_PREFIX}.{body}"
    return f"{signed}.{_sign(_key(secret), signed)}"


def verify_media_token(
    secret: str | bytes,
    token: str,
    *,
    session_id: str | None = None,
    now: float | None = None,
) -> MediaClaims:
    """Check ``token``'s form, signature and expiry (and its session when ``session_id`` is
    given); raise :class:`MediaTokenError` naming the problem. Pure: does not mark it used."""
    key = _key(secret)
    parts = token.split(".") if isinstance(token, str) and len(token) <= _MAX_TOKEN_CHARS else []
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise MediaTokenError(
            "malformed", f"the media token is malformed; expected {_PREFIX}.<payload>.<signature>"
        )
    expected = _sign(key, f"{parts[0]}.{parts[1]}")
    if not hmac.compare_digest(expected.encode(), parts[2].encode()):
        raise MediaTokenError(
            "bad_signature",
            "the media token's signature does not match (minted with another secret, or altered)",
        )
    try:
        claims = orjson.loads(_unb64(parts[1]))
        sid = validate_session_id(claims["sid"])
        expires_at = float(claims["exp"])
        token_id = str(claims["jti"])
    except (binascii.Error, ValueError, KeyError, TypeError, InvalidSessionId):
        raise MediaTokenError("malformed", "the media token's payload is malformed") from None
    current = time.time() if now is None else now
    if current >= expires_at:
        raise MediaTokenError(
            "expired",
            f"the media token expired {current - expires_at:.0f}s ago; mint a new one per leg",
        )
    if session_id is not None and sid != session_id:
        raise MediaTokenError(
            "wrong_session", f"the media token is for another session, not {session_id!r}"
        )
    return MediaClaims(session_id=sid, expires_at=expires_at, token_id=token_id)


async def consume_media_token(
    redis: Redis, keys: Keys, claims: MediaClaims, *, now: float | None = None
) -> None:
    """Mark the token used (``SET NX``, expiring with it); raise :class:`MediaTokenError`
    (``used``) if some leg used it already, (``unavailable``) if Redis does not answer."""
    current = time.time() if now is None else now
    ttl_ms = max(1000, int((claims.expires_at - current) * 1000) + 1000)
    key = keys.session(claims.session_id).media_token(claims.token_id)
    try:
        fresh = await redis.set(key, b"1", nx=True, px=ttl_ms)
    except REDIS_ERRORS as exc:
        raise MediaTokenError(
            "unavailable",
            f"cannot check the media token: Redis is unreachable ({type(exc).__name__})",
        ) from exc
    if not fresh:
        raise MediaTokenError(
            "used", "the media token was already used; mint a new one for every media leg"
        )
