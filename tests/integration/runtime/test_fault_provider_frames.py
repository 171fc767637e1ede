"""Fault suite, provider frames: generated and mutated server messages, fed to both translators,
both clients over a WebSocket, and a real worker's session.

Recorded OpenAI frames and hand-written Gemini frames are mutated by hypothesis (a field deleted,
a value replaced by any JSON, the message wrapped or emptied) or generated from scratch. The
contract: a translator returns actions or raises ``ProviderProtocolError`` (the client reports it
as a recoverable ``error`` event ``malformed_frame``), never anything else; a client never dies of
a frame (no exception escapes into the event loop); a worker lives and logs no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ingress import RedisRealtimeClient
from protocol import (
    AudioFormat,
    ProviderProtocolError,
    RealtimeAudioClient,
    RealtimeSessionConfig,
    SessionState,
    VoicegridError,
)
from providers.gemini import GeminiLiveClient
from providers.gemini.translator import GeminiTranslator
from providers.openai import OpenAIRealtimeClient
from providers.openai.translator import OpenAITranslator

from ...support.timing import scaled
from .faultkit import draw, fault_ledger, json_values, record  # noqa: F401 - fault_ledger is autouse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECORDED = Path(__file__).resolve().parents[2] / "unit" / "providers" / "openai" / "recorded"
#: Frames per translator, per client connection and for the worker's session.
TRANSLATOR_FRAMES = 400
CLIENT_FRAMES = 150
WORKER_FRAMES = 150

_AUDIO = base64.b64encode(b"\x01\x00" * 480).decode()
GEMINI_CORPUS: list[dict[str, Any]] = [
    {"setupComplete": {}},
    {
        "serverContent": {
            "modelTurn": {
                "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": _AUDIO}}]
            }
        }
    },
    {"serverContent": {"outputTranscription": {"text": "Hello"}}},
    {"serverContent": {"inputTranscription": {"text": "hi"}}},
    {"serverContent": {"generationComplete": True}},
    {
        "serverContent": {"turnComplete": True},
        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 9},
    },
    {"serverContent": {"interrupted": True}},
    {
        "toolCall": {
            "functionCalls": [{"id": "call_1", "name": "weather", "args": {"city": "Paris"}}]
        }
    },
    {"toolCallCancellation": {"ids": ["call_1"]}},
    {"goAway": {"timeLeft": "5s"}},
    {"sessionResumptionUpdate": {"newHandle": "h-1", "resumable": True}},
]


def openai_corpus() -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    for path in sorted(RECORDED.glob("*.json")):
        frames += json.loads(path.read_text())
    return frames


_json = json_values(max_size=3, max_leaves=8)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _mutated(frame: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    paths = _paths(frame)
    if not paths:
        return st.just(frame)

    def apply(path: tuple[Any, ...], op: str, value: Any) -> dict[str, Any]:
        out = copy.deepcopy(frame)
        parent: Any = out
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if op == "delete":
            del parent[last]
        else:
            parent[last] = value
        return out

    return st.builds(apply, st.sampled_from(paths), st.sampled_from(["delete", "replace"]), _json)


def frames_from(corpus: list[dict[str, Any]], count: int, *, typed: list[str]) -> list[Any]:
    """``count`` server messages: mutated corpus frames, generated objects (with a known
    ``type`` when ``typed``), arbitrary JSON and arbitrary text."""
    known = st.sampled_from(typed) if typed else st.text(max_size=10)
    strategy = st.one_of(
        st.sampled_from(corpus).flatmap(_mutated),
        st.sampled_from(corpus).flatmap(_mutated).flatmap(_mutated),
        st.builds(
            lambda t, body: {**body, "type": t},
            known,
            st.dictionaries(st.text(max_size=8), _json, max_size=4),
        ),
        _json,
        st.text(max_size=40),
    )
    return draw(strategy, count)


def _wire(frame: Any) -> str:
    return frame if isinstance(frame, str) else orjson.dumps(frame).decode()


# --- translators -----------------------------------------------------------------------------


def test_both_translators_take_any_frame_or_refuse_it_as_a_protocol_error() -> None:
    corpus = openai_corpus()
    openai_types = sorted({f["type"] for f in corpus})
    counts = {}
    openai = OpenAITranslator(RealtimeSessionConfig())
    openai.handshake_frames(reconnect=False)
    refused = 0
    frames = frames_from(corpus, TRANSLATOR_FRAMES, typed=openai_types)
    for frame in [*corpus, *frames]:
        if not isinstance(frame, dict):
            continue  # the OpenAI client parses the wire text itself (parse_frame)
        try:
            openai.receive(frame, time.monotonic())
        except ProviderProtocolError:
            refused += 1
        except Exception as exc:  # pragma: no cover - the failure report
            raise AssertionError(f"OpenAI translator raised {exc!r} on {frame!r}") from exc
    counts["openai"] = (len(frames), refused)

    gemini = GeminiTranslator(
        model="m",
        config=RealtimeSessionConfig(input_audio=AudioFormat(sample_rate=16000)),
    )
    gemini.setup_frame(resume=False)
    refused = 0
    frames = frames_from(GEMINI_CORPUS, TRANSLATOR_FRAMES, typed=[])
    for frame in [*GEMINI_CORPUS, *frames]:
        try:
            gemini.receive(_wire(frame))
        except ProviderProtocolError:
            refused += 1
        except Exception as exc:  # pragma: no cover - the failure report
            raise AssertionError(f"Gemini translator raised {exc!r} on {frame!r}") from exc
    counts["gemini"] = (len(frames), refused)
    record(
        "provider_frames_translators",
        openai_cases=counts["openai"][0],
        openai_refused=counts["openai"][1],
        gemini_cases=counts["gemini"][0],
        gemini_refused=counts["gemini"][1],
    )


# --- clients over a WebSocket ----------------------------------------------------------------


class FrameServer:
    """A provider endpoint that completes the handshake, then sends the given frames."""

    def __init__(self, provider: str, frames: list[Any]) -> None:
        self.provider = provider
        self.frames = frames
        self.port = 0
        self.connections = 0
        self.audio_received = 0

    async def _serve(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            first = orjson.loads(await ws.recv())
            if self.provider == "openai":
                assert first.get("type") == "session.update", first
                done = {"type": "session.updated", "event_id": "e0", "session": first["session"]}
                await ws.send(orjson.dumps(done).decode())
            else:
                assert "setup" in first, first
                await ws.send('{"setupComplete": {}}')
            sender = asyncio.create_task(self._send(ws))
            async for message in ws:
                if b"audio" in (message if isinstance(message, bytes) else message.encode()):
                    self.audio_received += 1
            sender.cancel()
        except ConnectionClosed:
            pass

    async def _send(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in self.frames:
                await ws.send(_wire(frame))
                await asyncio.sleep(0.002)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        async with serve(self._serve, "127.0.0.1", 0, max_size=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{self.port}/v1"


def _client(provider: str, url: str) -> RealtimeAudioClient:
    if provider == "openai":
        return OpenAIRealtimeClient(model="gpt-realtime", api_key="sk-test", url=url)
    return GeminiLiveClient(model="m", api_key="k", url=url)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_both_clients_survive_any_frame(provider: str) -> None:
    corpus = openai_corpus() if provider == "openai" else GEMINI_CORPUS
    typed = sorted({f["type"] for f in corpus}) if provider == "openai" else []
    frames = frames_from(corpus, CLIENT_FRAMES, typed=typed)
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    server = FrameServer(provider, frames)
    events: dict[str, int] = {}
    try:
        async with server.running() as url:
            client = _client(provider, url)
            for name in ("error", "closed", "audio", "transcript", "tool-call", "reconnecting"):
                client.on(name, _counter(events, name))  # type: ignore[arg-type]
            fmt = AudioFormat(sample_rate=24000 if provider == "openai" else 16000)
            await client.connect(RealtimeSessionConfig(input_audio=fmt))
            deadline = time.monotonic() + scaled(3)  # the frames take about 0.5 s
            while time.monotonic() < deadline and client.state is not SessionState.CLOSED:
                with contextlib.suppress(VoicegridError):  # not while it reconnects
                    client.send_audio(b"\x00\x00" * 320)
                await asyncio.sleep(0.02)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)
    finally:
        loop.set_exception_handler(previous)
    record(
        f"provider_frames_client_{provider}",
        cases=len(frames),
        error_events=events.get("error", 0),
        closed=events.get("closed", 0),
        connections=server.connections,
        escaped_exceptions=len(escaped),
    )
    assert escaped == [], escaped[:3]


def _counter(events: dict[str, int], name: str) -> Callable[[Any], None]:
    def count(_payload: Any) -> None:
        events[name] = events.get(name, 0) + 1

    return count


# --- a worker's session ----------------------------------------------------------------------


async def test_a_worker_lives_through_any_frame_its_provider_sends(
    workers: Any, redis_url: str, namespace: str
) -> None:
    corpus = openai_corpus()
    frames = frames_from(corpus, WORKER_FRAMES, typed=sorted({f["type"] for f in corpus}))
    server = FrameServer("openai", frames)
    async with server.running() as url:
        worker = workers("a", url)
        await worker.wait_ready()
        client = RedisRealtimeClient(
            redis_url, provider="openai", model="gpt-realtime", namespace=namespace
        )
        events: dict[str, int] = {}
        for name in ("error", "closed", "audio", "transcript", "reconnecting", "reconnected"):
            client.on(name, _counter(events, name))  # type: ignore[arg-type]
        await client.connect(RealtimeSessionConfig())
        deadline = time.monotonic() + scaled(3)
        while time.monotonic() < deadline and client.connected:
            client.send_audio(b"\x00\x00" * 480)
            await asyncio.sleep(0.02)
        if client.connected:
            assert await client.ping() in (True, False)  # answered, whatever the provider did
            await client.disconnect()
        log = worker.log_path.read_text()
        record(
            "provider_frames_worker",
            cases=len(frames),
            error_events=events.get("error", 0),
            session_closed=events.get("closed", 0),
            worker_alive=worker.proc.poll() is None,
            tracebacks=log.count("Traceback"),
        )
        assert worker.proc.poll() is None
        assert "Traceback" not in log, log[-3000:]
