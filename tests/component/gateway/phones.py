"""Fake Twilio and Telnyx media-stream clients, written from the providers' documented message
formats (``docs/telephony.md`` cites the shapes): they open the gateway's media endpoint as the
provider would, send ``connected``/``start``/``media``/``dtmf``/``mark``/``stop`` and record what
the gateway sends back (``media``, ``mark``, ``clear``). Marks are echoed like a phone that
plays audio instantly (``echo_marks``), so playback reports flow.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ...support.timing import scaled

#: 20 ms of 8 kHz G.711
FRAME = 160


def tone_mulaw(i: int) -> bytes:
    """A 20 ms mu-law payload whose bytes say which frame it is (never 0xFF, the silence)."""
    return bytes([(i * 7 + k) % 200 + 20 for k in range(FRAME)])


class FakePhone:
    """A provider's side of one media stream (see the module docstring)."""

    stream_key = "streamSid"

    def __init__(self, ws: ClientConnection, *, echo_marks: bool = True) -> None:
        self.ws = ws
        self.echo_marks = echo_marks
        self.received: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._seq = itertools.count(1)
        self._chunk = itertools.count(1)
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                body = orjson.loads(message)
                self.received.append(body)
                self.received_at.append(time.perf_counter())
                if self.echo_marks and body.get("event") == "mark":
                    await self.send_event("mark", mark={"name": body["mark"]["name"]})
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.closed.set()
            self._changed.set()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == event]

    def media_payloads(self) -> list[bytes]:
        return [base64.b64decode(m["media"]["payload"]) for m in self.of("media")]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(scaled(within)):
            while not predicate():
                if self.closed.is_set() and not predicate():
                    raise AssertionError(
                        f"stream closed ({self.close_code} {self.close_reason!r}) first"
                    )
                self._changed.clear()
                await self._changed.wait()

    async def send_event(self, event: str, **fields: Any) -> None:
        body: dict[str, Any] = {"event": event, "sequenceNumber": str(next(self._seq))}
        body.update(fields)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(orjson.dumps(body).decode())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.closed.wait()


class FakeTwilio(FakePhone):
    """Twilio Media Streams (bidirectional ``<Connect><Stream>``)."""

    stream_sid = "MZ18ad3ab5a668481ce02b83e7395059f0"
    call_sid = "CA5ee2a5f0c9a34a9b8b9c1e6e4c4b1f00"

    async def start(self, parameters: dict[str, str], *, media_format: Any = None) -> None:
        await self.ws.send(
            orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode()
        )
        await self.send_event(
            "start",
            streamSid=self.stream_sid,
            start={
                "accountSid": "AC00000000000000000000000000000000",
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": media_format
                or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": parameters,
            },
        )

    async def media(self, payload: bytes) -> None:
        chunk = next(self._chunk)
        await self.send_event(
            "media",
            streamSid=self.stream_sid,
            media={
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        )

    async def dtmf(self, digit: str) -> None:
        await self.send_event(
            "dtmf", streamSid=self.stream_sid, dtmf={"track": "inbound_track", "digit": digit}
        )

    async def stop(self) -> None:
        await self.send_event(
            "stop",
            streamSid=self.stream_sid,
            stop={"accountSid": "AC00000000000000000000000000000000", "callSid": self.call_sid},
        )


class FakeTelnyx(FakePhone):
    """Telnyx media streaming (Call Control, ``stream_bidirectional_mode=rtp``)."""

    stream_id = "32de0dea-53cb-4b21-89a4-9e1819c043bc"
    stream_key = "stream_id"

    def numbered(self, event: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": event,
            "sequence_number": str(next(self._seq)),
            "stream_id": self.stream_id,
        }
        body.update(fields)
        return body

    async def send_body(self, body: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(orjson.dumps(body).decode())

    async def start(self, encoding: str = "PCMU", sample_rate: int = 8000) -> None:
        await self.ws.send(orjson.dumps({"event": "connected", "version": "1.0.0"}).decode())
        await self.send_body(
            self.numbered(
                "start",
                start={
                    "user_id": "3e6f995f-85f7-4705-9741-53b116d28237",
                    "call_control_id": "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg",
                    "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
                    "media_format": {
                        "encoding": encoding,
                        "sample_rate": sample_rate,
                        "channels": 1,
                    },
                },
            )
        )

    def media_body(self, payload: bytes) -> dict[str, Any]:
        chunk = next(self._chunk)
        return self.numbered(
            "media",
            media={
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        )

    async def media(self, payload: bytes) -> None:
        await self.send_body(self.media_body(payload))

    async def dtmf(self, digit: str) -> None:
        await self.send_body(
            self.numbered("dtmf", occurred_at="2026-12-06T12:00:00Z", dtmf={"digit": digit})
        )

    async def send_event(self, event: str, **fields: Any) -> None:
        await self.send_body(self.numbered(event, **fields))

    async def stop(self) -> None:
        await self.send_body(
            self.numbered("stop", stop={"user_id": "u", "call_control_id": "v3:x"})
        )


async def open_stream(url: str, kind: type[FakePhone], **kwargs: Any) -> Any:
    ws = await connect(url, open_timeout=scaled(5), compression=None)
    return kind(ws, **kwargs)
