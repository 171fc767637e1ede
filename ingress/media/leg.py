"""A media leg: one phone or browser WebSocket carrying only the audio of a session that the
application's backend created and controls (``docs/telephony.md``).

The leg attaches an :class:`ingress.RedisRealtimeClient` to the session (new events only: a phone
that re-attaches after a drop wants live audio, not a replay), converts the caller's audio to the
session's input format and the model's audio to the leg's, and relays what the caller's device
reports back: keypad digits (``send_dtmf``) and how much of each reply it has played
(``report_playback``, so barge-in truncation uses what the caller heard). Tool calls and config
changes stay with the backend's own client; a leg never ends the session, it only detaches.

Subclasses speak one wire protocol (Twilio, Telnyx, the browser page): they read the opening
messages, then feed :meth:`MediaLeg.audio_in` and render model audio in :meth:`on_audio`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sized
from typing import Any, Protocol

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol import (
    AudioEvent,
    AudioFormat,
    InterruptedEvent,
    NotConnectedError,
    RealtimeSessionConfig,
    VoicegridError,
)
from protocol.audio import AudioConverter
from protocol.events import EVENT_NAMES
from protocol.keys import Keys
from redisio.cluster import RedisStores

from ..client import RedisRealtimeClient
from ..media_tokens import MediaClaims, MediaTokenError, consume_media_token, verify_media_token
from ..settings import GatewaySettings


class LegRegistry(Protocol):
    """The legs of one gateway by session (``routes.MediaRouter``)."""

    def register(self, session_id: str, leg: MediaLeg) -> None: ...

    def unregister(self, leg: MediaLeg) -> None: ...

    async def supersede(self, session_id: str, leg: MediaLeg) -> None: ...


class Gateway(Protocol):
    """What a media leg uses of ``ingress.gateway.Gateway`` (no import: the gateway imports us)."""

    settings: GatewaySettings
    redis: Redis
    stores: RedisStores
    keys: Keys

    @property
    def media(self) -> LegRegistry: ...

    draining: bool
    max_connections: int

    @property
    def connections(self) -> Sized: ...

    async def session_identity(self, session_id: str) -> tuple[str, str]: ...


__all__ = [
    "CLOSE_BAD_TOKEN",
    "CLOSE_PROTOCOL",
    "FRAME_MS",
    "OPENING_TIMEOUT_S",
    "Gateway",
    "MediaLeg",
    "PlayedTracker",
]

log = logging.getLogger("voicegrid.gateway.media")

#: Model audio goes to a phone in payloads of this many milliseconds (160 bytes of G.711).
FRAME_MS = 20
#: Seconds a leg may take to send its opening messages (Twilio ``connected`` + ``start``).
OPENING_TIMEOUT_S = 10.0
#: Bytes queued towards one leg at most (about 60 s of 8 kHz G.711 as JSON); beyond: close 1008.
OUTBOUND_BUDGET_BYTES = 1024 * 1024
#: Close code: the leg's media token was missing, wrong, expired or already used.
CLOSE_BAD_TOKEN = 4401
#: Close code: the leg broke its wire protocol (a message that does not parse, a wrong codec).
CLOSE_PROTOCOL = 1008
#: Close code: the session does not exist or has ended.
CLOSE_SESSION_GONE = 4404
#: Close code: a newer leg attached to this session on this gateway.
CLOSE_SUPERSEDED = 4409


class PlayedTracker:
    """Which part of each model reply a phone has played, from the marks it echoed.

    :meth:`sent` records that ``nbytes`` of reply ``response_id`` went out and returns the name
    of a mark to send after them every ``every_ms``; :meth:`confirmed` turns an echoed mark into
    ``(response_id, played_ms)``. :meth:`clear` (barge-in) forgets the marks in flight: a
    provider echoes them when its buffer is cleared, and they do not mean the audio was played.
    """

    def __init__(self, fmt: AudioFormat, *, every_ms: int = 100) -> None:
        self._bytes_per_ms = fmt.bytes_per_second / 1000.0
        self._every = every_ms
        self._generation = 0
        self._response: str | None = None
        self._sent_ms = 0.0
        self._last_mark_ms = 0.0
        self._pending: dict[str, tuple[str | None, int]] = {}
        self.played: dict[str | None, int] = {}

    def sent(self, response_id: str | None, nbytes: int, *, force: bool = False) -> str | None:
        if response_id != self._response:
            self._response = response_id
            self._sent_ms = self._last_mark_ms = 0.0
        self._sent_ms += nbytes / self._bytes_per_ms
        if not force and self._sent_ms - self._last_mark_ms < self._every:
            return None
        self._last_mark_ms = self._sent_ms
        name = f"vg{self._generation}.{len(self._pending)}.{int(self._sent_ms)}"
        if len(self._pending) >= 4096:  # a provider that never echoes: forget the oldest
            self._pending.pop(next(iter(self._pending)))
        self._pending[name] = (response_id, int(self._sent_ms))
        return name

    def confirmed(self, name: str) -> tuple[str | None, int] | None:
        position = self._pending.pop(name, None)
        if position is not None:
            response_id, ms = position
            self.played[response_id] = max(ms, self.played.get(response_id, 0))
            if len(self.played) > 16:
                self.played.pop(next(iter(self.played)))
        return position

    def clear(self) -> None:
        self._generation += 1
        self._pending.clear()
        self._response = None
        self._sent_ms = self._last_mark_ms = 0.0


class LegRefused(VoicegridError):
    """The leg cannot go on: closed with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MediaLeg(abc.ABC):
    """One media WebSocket attached to a session (see the module docstring)."""

    #: ``twilio``, ``telnyx`` or ``browser`` (logs, metrics).
    kind = "media"

    def __init__(self, gateway: Gateway, ws: ServerConnection, claims: MediaClaims | None) -> None:
        self.gateway = gateway
        self.ws = ws
        self.claims = claims
        self.client: RedisRealtimeClient | None = None
        self.leg_in: AudioFormat | None = None  # what the caller's device sends
        self.leg_out: AudioFormat | None = None  # what it plays
        self._to_session: AudioConverter | None = None
        self._to_leg: AudioConverter | None = None
        self._interrupted: set[str] = set()
        self._outbox: deque[str | bytes] = deque()
        self._outbox_bytes = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing: tuple[int, str] | None = None
        self._stop = asyncio.Event()
        self.done = asyncio.Event()

    @property
    def session_id(self) -> str | None:
        return self.claims.session_id if self.claims is not None else None

    # --- subclass hooks ------------------------------------------------------------------------

    async def opening(self) -> None:  # noqa: B027 - optional hook, nothing by default
        """Read the opening messages (set :attr:`claims`, :attr:`leg_in`, :attr:`leg_out`)."""

    @abc.abstractmethod
    async def on_message(self, message: str | bytes) -> None:
        """One message from the leg after the opening."""

    @abc.abstractmethod
    def on_audio(self, response_id: str | None, data: bytes) -> None:
        """Model audio, already in :attr:`leg_out`: send it to the leg."""

    def on_interrupted(self, response_id: str | None) -> None:  # noqa: B027 - optional hook, nothing by default
        """Barge-in: the leg must stop playing ``response_id`` now."""

    def on_event(self, name: str, payload: BaseModel) -> None:  # noqa: B027 - optional hook, nothing by default
        """Any other session event (phones ignore most; the browser page shows them)."""

    def on_attached(self) -> None:  # noqa: B027 - optional hook, nothing by default
        """The leg is attached and its formats are known."""

    def choose_formats(self, config: RealtimeSessionConfig) -> None:
        """Set :attr:`leg_in` and :attr:`leg_out` from the session's config when the opening did
        not (the browser page adapts to the session)."""
        raise LegRefused(CLOSE_PROTOCOL, f"{self.kind} leg has no audio format")

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"voicegrid-{self.kind}-send")
        try:
            await self._run()
        except LegRefused as exc:
            self.close(exc.code, exc.reason)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s leg of session %s failed", self.kind, self.session_id)
            self.close(1011, "internal error")
        finally:
            await self._finish(sender)

    async def _run(self) -> None:
        async with asyncio.timeout(OPENING_TIMEOUT_S):
            await self.opening()
        if self.claims is None:
            raise LegRefused(CLOSE_PROTOCOL, f"{self.kind} leg ended before it started")
        await self._attach(self.claims.session_id)
        self.on_attached()
        receiver = asyncio.create_task(self._receive())
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({receiver, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done() and not receiver.cancelled():
                receiver.result()  # re-raise LegRefused etc.
        finally:
            receiver.cancel()
            stopped.cancel()
            await asyncio.gather(receiver, stopped, return_exceptions=True)

    async def _receive(self) -> None:
        while True:
            await self.on_message(await self.ws.recv())

    async def recv_opening(self) -> str | bytes:
        """The next message during the opening."""
        return await self.ws.recv()

    async def redeem(self, token: str | None, session_id: str | None = None) -> MediaClaims:
        """Check a media token and mark it used; :class:`LegRefused` (4401) when it fails."""
        secret = self.gateway.settings.media_token_secret
        if not secret:
            raise LegRefused(CLOSE_BAD_TOKEN, "media legs are disabled on this gateway")
        if not token:
            raise LegRefused(CLOSE_BAD_TOKEN, "media token refused: missing")
        try:
            claims = verify_media_token(secret, token, session_id=session_id)
            await consume_media_token(self.gateway.redis, self.gateway.keys, claims)
        except MediaTokenError as exc:
            log.info("%s leg refused: media token %s", self.kind, exc.reason)
            raise LegRefused(CLOSE_BAD_TOKEN, f"media token refused: {exc.reason}") from None
        return claims

    async def _attach(self, session_id: str) -> None:
        gateway = self.gateway
        await gateway.media.supersede(session_id, self)
        try:
            provider, model = await gateway.session_identity(session_id)
            client = RedisRealtimeClient(
                gateway.settings.redis_url,
                provider=provider,
                model=model,
                namespace=gateway.settings.namespace,
                stores=gateway.stores,
            )
            for name in sorted(EVENT_NAMES):
                client.on(name, self._handler(name))  # type: ignore[arg-type]
            await client.attach(session_id)
        except NotConnectedError:
            raise LegRefused(CLOSE_SESSION_GONE, "session not found or ended") from None
        except VoicegridError as exc:
            log.warning("%s leg: attach to %s failed: %s", self.kind, session_id, exc)
            raise LegRefused(1013, "attach failed; retry") from None
        self.client = client
        gateway.media.register(session_id, self)
        assert client.config is not None
        if self.leg_in is None or self.leg_out is None:
            self.choose_formats(client.config)
        assert self.leg_in is not None and self.leg_out is not None
        self._to_session = AudioConverter(self.leg_in, client.config.input_audio)
        self._to_leg = AudioConverter(client.config.output_audio, self.leg_out)
        log.info("%s leg attached to session %s", self.kind, session_id)

    async def _finish(self, sender: asyncio.Task[None]) -> None:
        try:
            if self._closing is not None:
                code, reason = self._closing
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._idle.wait()
                sender.cancel()
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.close(code, reason)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if self.client is not None:
                await self.client.detach()  # the call goes on; the backend decides its end
            self.gateway.media.unregister(self)
            self.done.set()

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = (code, reason)
            self._stop.set()

    async def shutdown(self, code: int, reason: str) -> None:
        self.close(code, reason)
        await self.done.wait()

    # --- caller -> session ---------------------------------------------------------------------

    def audio_in(self, data: bytes) -> None:
        """Caller audio in :attr:`leg_in`: convert and queue it for the session."""
        client, converter = self.client, self._to_session
        if client is None or converter is None or not data:
            return
        with contextlib.suppress(NotConnectedError):
            client.send_audio(converter.convert(data))

    def dtmf(self, digit: str) -> None:
        if self.client is not None:
            try:
                self.client.send_dtmf(digit)
            except NotConnectedError:
                pass
            except VoicegridError as exc:
                raise LegRefused(CLOSE_PROTOCOL, str(exc)) from None

    def played(self, response_id: str | None, played_ms: int) -> None:
        if self.client is not None:
            with contextlib.suppress(VoicegridError):
                self.client.report_playback(response_id, played_ms)

    # --- session -> caller ---------------------------------------------------------------------

    def _handler(self, name: str) -> Callable[[Any], None]:
        def handle(payload: Any) -> None:
            self._on_session_event(name, payload)

        return handle

    def _on_session_event(self, name: str, payload: BaseModel) -> None:
        if isinstance(payload, AudioEvent):
            if payload.response_id is not None and payload.response_id in self._interrupted:
                return
            if self._to_leg is not None:
                self.on_audio(payload.response_id, self._to_leg.convert(payload.data))
            return
        if isinstance(payload, InterruptedEvent):
            if payload.response_id is not None:
                self._interrupted.add(payload.response_id)
                if len(self._interrupted) > 64:
                    self._interrupted.pop()
            if self._to_leg is not None and self.client is not None:
                assert self.client.config is not None and self.leg_out is not None
                self._to_leg = AudioConverter(self.client.config.output_audio, self.leg_out)
            self.on_interrupted(payload.response_id)
        self.on_event(name, payload)
        if name == "closed":
            self.close(1000, "session ended")

    def send_json(self, body: dict[str, Any]) -> None:
        self.send(orjson.dumps(body).decode())

    def send(self, message: str | bytes) -> None:
        if self._closing is not None and self._closing[0] == CLOSE_PROTOCOL:
            return
        size = len(message)
        if self._outbox_bytes + size > OUTBOUND_BUDGET_BYTES:
            log.warning("%s leg of %s is not reading; closing", self.kind, self.session_id)
            self._outbox.clear()
            self._outbox_bytes = 0
            self._idle.set()
            self.close(CLOSE_PROTOCOL, "not reading")
            return
        self._outbox.append(message)
        self._outbox_bytes += size
        self._idle.clear()
        self._wakeup.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                while not self._outbox:
                    self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                message = self._outbox.popleft()
                self._outbox_bytes -= len(message)
                await self.ws.send(message)
        except ConnectionClosed:
            self._idle.set()
            self._stop.set()
