"""The gateway's media routes: phone and browser legs, media tokens, and the browser page.

=======================================  =================================================
``GET /v1/media/twilio`` (WebSocket)      Twilio Media Stream (token in ``customParameters``)
``GET /v1/media/telnyx?token=``           Telnyx media stream
``GET /v1/media/browser?token=``          the browser page's leg
``POST /v1/sessions/{id}/media-token``    a media token for session ``id`` (service token)
``GET /demo/``                            the browser page (static files, ``ingress/static``)
=======================================  =================================================

:class:`MediaRouter` is the whole of it; ``ingress/gateway.py`` only hands it the requests whose
path :meth:`MediaRouter.handles`. Refusals happen before the upgrade as plain-text HTTP
responses, like the gateway's own; the media token and the Twilio signature are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import weakref
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol import InvalidSessionId, NotConnectedError, RuntimeFailure
from protocol.keys import validate_session_id

from ..media_tokens import (
    MediaClaims,
    MediaTokenError,
    consume_media_token,
    mint_media_token,
    verify_media_token,
)
from ..refusals import refuse
from .browser import BrowserLeg
from .leg import Gateway, MediaLeg
from .telnyx import TelnyxLeg
from .twilio import TwilioLeg, valid_twilio_signature

__all__ = ["MEDIA_PREFIX", "PAGE_PREFIX", "MediaRouter"]

log = logging.getLogger("voicegrid.gateway.media")

MEDIA_PREFIX = "/v1/media/"
PAGE_PREFIX = "/demo"
_TOKEN_SUFFIX = "/media-token"
_SESSIONS = "/v1/sessions/"
_LEGS: dict[str, type[MediaLeg]] = {
    "twilio": TwilioLeg,
    "telnyx": TelnyxLeg,
    "browser": BrowserLeg,
}
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by URL path (read once; no directory walking per request)."""
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files("ingress") / "static"
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[f"{PAGE_PREFIX}/{entry.name}"] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    if f"{PAGE_PREFIX}/index.html" in files:
        files[f"{PAGE_PREFIX}/"] = files[f"{PAGE_PREFIX}/index.html"]
    return files


def _media_disabled(connection: ServerConnection) -> Response:
    """The refusal of every media route while no media token secret is set."""
    return refuse(
        connection,
        503,
        "unauthorized",
        "media legs are disabled: set VOICEGRID_MEDIA_TOKEN_SECRET on the gateway",
    )


class MediaRouter:
    """Media legs of one gateway (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.legs: set[MediaLeg] = set()
        self._by_session: dict[str, MediaLeg] = {}
        self._claims: weakref.WeakKeyDictionary[ServerConnection, MediaClaims] = (
            weakref.WeakKeyDictionary()
        )
        self._static: dict[str, tuple[bytes, str]] | None = None

    @staticmethod
    def handles(path: str) -> bool:
        route = urlsplit(path).path
        return (
            route.startswith(MEDIA_PREFIX)
            or route == PAGE_PREFIX
            or route.startswith(PAGE_PREFIX + "/")
            or (route.startswith(_SESSIONS) and route.endswith(_TOKEN_SUFFIX))
        )

    # --- before the upgrade --------------------------------------------------------------------

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        parts = urlsplit(request.path)
        route = parts.path
        if route == PAGE_PREFIX or route.startswith(PAGE_PREFIX + "/"):
            return self._page(connection, route)
        if route.endswith(_TOKEN_SUFFIX):
            return await self._mint(connection, request, route)
        kind = route[len(MEDIA_PREFIX) :].rstrip("/")
        if kind not in _LEGS:
            return refuse(
                connection,
                404,
                "not_found",
                f"no media endpoint {route!r}; expected "
                f"{', '.join(MEDIA_PREFIX + k for k in _LEGS)}",
            )
        if self.gateway.draining:
            return refuse(connection, 503, "draining", "gateway is restarting; retry")
        if len(self.gateway.connections) + len(self.legs) >= self.gateway.max_connections:
            return refuse(connection, 503, "full", "gateway is full; retry")
        settings = self.gateway.settings
        if not settings.media_token_secret:
            return _media_disabled(connection)
        try:
            query = parse_qs(parts.query, keep_blank_values=True)
        except ValueError:
            return refuse(connection, 400, "bad_request", "the query is malformed")
        allowed = {"token", "session"} if kind != "twilio" else set()
        unknown = sorted(set(query) - allowed)
        if unknown:
            hint = (
                "none (Twilio sends its <Parameter>s in 'start')"
                if kind == "twilio"
                else ("token and session")
            )
            return refuse(
                connection,
                400,
                "bad_request",
                f"unexpected query parameters {unknown}; allowed: {hint}",
            )
        if kind == "twilio":
            if settings.twilio_auth_token and not valid_twilio_signature(
                settings.twilio_auth_token,
                self._public_url(request),
                request.headers.get("X-Twilio-Signature"),
            ):
                return refuse(
                    connection,
                    403,
                    "unauthorized",
                    "X-Twilio-Signature is missing or does not match this URL "
                    "(check VOICEGRID_PUBLIC_URL and VOICEGRID_TWILIO_AUTH_TOKEN)",
                )
            return None  # the media token comes in the 'start' message
        token = (query.get("token") or [""])[0]
        sessions = query.get("session")
        session = sessions[0] if sessions else None
        try:
            claims = await self._redeem(token, session)
        except MediaTokenError as exc:
            log.info("%s leg refused: media token %s", kind, exc.reason)
            status = 503 if exc.reason == "unavailable" else 401
            return refuse(connection, status, "media_token", str(exc))
        self._claims[connection] = claims
        return None

    async def _redeem(self, token: str, session: str | None) -> MediaClaims:
        if not token:
            raise MediaTokenError("missing", "no media token; pass ?token=<media token>")
        claims = verify_media_token(
            self.gateway.settings.media_token_secret, token, session_id=session
        )
        await consume_media_token(self.gateway.redis, self.gateway.keys, claims)
        return claims

    def _public_url(self, request: Request) -> str:
        base = self.gateway.settings.public_url
        if not base:
            base = "wss://" + (request.headers.get("Host") or "")
        return base + request.path

    async def _mint(self, connection: ServerConnection, request: Request, route: str) -> Response:
        gateway = self.gateway
        raw_sid = route[len(_SESSIONS) : -len(_TOKEN_SUFFIX)]
        if request.method != "POST":
            response = refuse(
                connection, 405, "bad_request", f"use POST {_SESSIONS}<id>{_TOKEN_SUFFIX}"
            )
            response.headers["Allow"] = "POST"
            return response
        token = gateway.settings.gateway_token
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )
        if not token or not valid:
            why = (
                "send Authorization: Bearer <token>"
                if token
                else ("minting needs VOICEGRID_GATEWAY_TOKEN set (the service credential)")
            )
            return refuse(connection, 401 if token else 503, "unauthorized", why)
        if not gateway.settings.media_token_secret:
            return _media_disabled(connection)
        try:
            session_id = validate_session_id(raw_sid)
            await gateway.session_identity(session_id)
        except InvalidSessionId as exc:
            return refuse(connection, 400, "bad_request", str(exc))
        except NotConnectedError as exc:
            return refuse(connection, 404, "not_found", str(exc))
        except RuntimeFailure as exc:
            return refuse(connection, 503, "draining", str(exc))
        ttl = gateway.settings.media_token_ttl_s
        secret = gateway.settings.media_token_secret
        body = orjson.dumps(
            {
                "token": mint_media_token(secret, session_id, ttl_s=ttl),
                "expires_in": ttl,
                "session_id": session_id,
            }
        )
        headers = Headers(
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ]
        )
        return Response(200, "OK", headers, body)

    def _page(self, connection: ServerConnection, route: str) -> Response:
        if route == PAGE_PREFIX:
            response = connection.respond(HTTPStatus.MOVED_PERMANENTLY, "see /demo/\n")
            response.headers["Location"] = PAGE_PREFIX + "/"
            return response
        if self._static is None:
            self._static = _static_files()
        found = self._static.get(route)
        if found is None:
            return refuse(connection, 404, "not_found", f"no page file {route!r}")
        body, content_type = found
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )
        return Response(200, "OK", headers, body)

    # --- after the upgrade ---------------------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        kind = urlsplit(ws.request.path).path[len(MEDIA_PREFIX) :].rstrip("/")
        leg = _LEGS[kind](self.gateway, ws, self._claims.pop(ws, None))
        self.legs.add(leg)
        try:
            await leg.run()
        finally:
            self.legs.discard(leg)

    def register(self, session_id: str, leg: MediaLeg) -> None:
        self._by_session[session_id] = leg

    def unregister(self, leg: MediaLeg) -> None:
        sid = leg.session_id
        if sid is not None and self._by_session.get(sid) is leg:
            del self._by_session[sid]

    async def supersede(self, session_id: str, leg: MediaLeg) -> None:
        """A newer leg attaches to ``session_id``: close this gateway's older one (4409)."""
        old = self._by_session.get(session_id)
        if old is not None and old is not leg:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await old.shutdown(4409, "attached by a newer connection")

    async def drain(self) -> None:
        """Close every leg with 1012; the sessions go on for the legs' next attach."""
        await asyncio.gather(
            *(leg.shutdown(1012, "service restart") for leg in list(self.legs)),
            return_exceptions=True,
        )
