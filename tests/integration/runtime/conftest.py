"""Integration fixtures: real Redis (``REDIS_URL``), real ``voicegrid worker`` processes, and the
provider simulators started in the test process; plus the helpers the failover tests share.

Every test gets its own key namespace (``VOICEGRID_NAMESPACE``), removed afterwards with the arq
keys of its jobs, so runs can share the machine's Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from ingress import RedisRealtimeClient
from protocol.keys import Keys
from providers.simulator.base import BaseSimulator

from ...support.frames import frame_numbers, numbered_frame
from ...support.net import free_port, http_get, voicegrid_command
from ...support.prometheus import sample_value
from ...support.timing import scaled

FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16
GEMINI_FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16 (Gemini's native rate: forwarded byte for byte)


class WorkerProcess:
    """One ``voicegrid worker`` subprocess."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.worker_id = f"{name}-{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        full_env = {
            **os.environ,
            **env,
            "VOICEGRID_METRICS_PORT": str(self.port),
            "VOICEGRID_WORKER_ID": self.worker_id,
        }
        self.proc = subprocess.Popen(
            voicegrid_command("worker"), env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def http(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(http_get, self.port, path)

    async def wait_ready(self, within: float = 20.0) -> None:
        async with asyncio.timeout(scaled(within)):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    if (await self.http("/readyz"))[0] == 200:
                        return
                await asyncio.sleep(0.05)

    async def metric(self, name: str, **labels: str) -> float:
        _, body = await self.http("/metrics")
        return sample_value(body, name, **labels)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self, within: float = 30.0) -> int:
        async with asyncio.timeout(scaled(within)):
            while self.proc.poll() is None:  # noqa: ASYNC110 - a child process has no event here
                await asyncio.sleep(0.02)
        return int(self.proc.returncode)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(scaled(10))
        self._log.close()


@pytest.fixture
def redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture
async def namespace(redis_url: str) -> AsyncIterator[str]:
    ns = f"vgit-{uuid.uuid4().hex[:10]}"
    yield ns
    redis = Redis.from_url(redis_url)
    try:
        for pattern in (f"{ns}:*", f"arq:*:{ns}:*"):
            async for key in redis.scan_iter(match=pattern, count=1000):
                await redis.delete(key)
    finally:
        await redis.aclose()


def worker_env(redis_url: str, namespace: str, sim_url: str, **env: str) -> dict[str, str]:
    """The environment of a ``voicegrid worker`` of a test (``env`` adds or overrides)."""
    return {
        "REDIS_URL": redis_url,
        "VOICEGRID_NAMESPACE": namespace,
        "VOICEGRID_OPENAI_URL": sim_url,
        "OPENAI_API_KEY": "sk-integration-test",
        "VOICEGRID_LOG_LEVEL": "INFO",
        **env,
    }


@pytest.fixture
def workers(namespace: str, redis_url: str, tmp_path: Path) -> Any:
    started: list[WorkerProcess] = []

    def start(name: str, sim_url: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(name, worker_env(redis_url, namespace, sim_url, **env), tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def make_client(namespace: str, redis_url: str) -> Callable[..., RedisRealtimeClient]:
    def make(provider: str = "openai", model: str = "gpt-realtime") -> RedisRealtimeClient:
        return RedisRealtimeClient(
            redis_url,
            provider=provider,
            model=model,
            namespace=namespace,
            connect_timeout_s=scaled(20),
        )

    return make


def frames_seen(audio: bytes, frame_bytes: int = FRAME_BYTES) -> list[int]:
    """The sequence numbers of the caller frames in ``audio`` (one provider connection's input)."""
    return frame_numbers(audio, frame_bytes)


class Caller:
    """Plays caller audio in real time: 1 s of speech, 0.6 s of silence, repeated."""

    def __init__(self, client: RedisRealtimeClient, frame_bytes: int = FRAME_BYTES) -> None:
        self.client = client
        self.frame_bytes = frame_bytes
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._play())

    async def _play(self) -> None:
        start = time.monotonic()
        while True:
            speech = self.sent % 80 < 50
            self.client.send_audio(numbered_frame(self.sent, self.frame_bytes, speech=speech))
            self.sent += 1
            await asyncio.sleep(max(0.0, start + self.sent * 0.02 - time.monotonic()))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
def caller() -> Callable[..., Caller]:
    return Caller


@pytest.fixture
def frames() -> Callable[..., list[int]]:
    return frames_seen


class Timeline:
    """Events of a client with their arrival times."""

    def __init__(self, client: Any) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self._changed = asyncio.Event()
        for name in ("audio", "reconnecting", "reconnected", "closed", "error"):
            client.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        def handle(payload: Any) -> None:
            self.events.append((time.monotonic(), name, payload))
            self._changed.set()

        return handle

    def first(self, name: str, after: float = 0.0) -> tuple[float, Any] | None:
        for at, event, payload in self.events:
            if event == name and at >= after:
                return at, payload
        return None

    async def wait(
        self, name: str, *, after: float = 0.0, within: float = 10.0
    ) -> tuple[float, Any]:
        async with asyncio.timeout(scaled(within)):
            while (found := self.first(name, after)) is None:
                self._changed.clear()
                await self._changed.wait()
        return found


async def owner_of(redis_url: str, namespace: str, session_id: str) -> str:
    redis = Redis.from_url(redis_url)
    try:
        owner = await redis.hget(Keys(namespace).session(session_id).state, "owner")
    finally:
        await redis.aclose()
    return owner.decode() if owner else ""


async def start_pair(workers: Any, sim: BaseSimulator, **env: str) -> list[Any]:
    """Two ready workers talking to ``sim`` (``env``: e.g. ``VOICEGRID_GEMINI_URL``)."""
    pair = [workers("a", sim.url, **env), workers("b", sim.url, **env)]
    await asyncio.gather(*(w.wait_ready() for w in pair))
    return pair


async def start_call(
    sim: BaseSimulator,
    workers: Any,
    make_client: Any,
    caller: Any,
    redis_url: str,
    namespace: str,
    config: Any,
    *,
    client_options: dict[str, Any] | None = None,
    frame_bytes: int = FRAME_BYTES,
    **env: str,
) -> tuple[Any, Any, Timeline, Any, list[Any]]:
    """Two workers, a session and a caller talking; returns once the model answered the first
    turn: ``(client, owner, timeline, call, pair)``."""
    pair = await start_pair(workers, sim, **env)
    client = make_client(**(client_options or {}))
    timeline = Timeline(client)
    await client.connect(config)
    owner_id = await owner_of(redis_url, namespace, client.session_id)
    owner = next(w for w in pair if w.worker_id == owner_id)
    call = caller(client, frame_bytes=frame_bytes)
    call.start()
    await timeline.wait("audio", within=15)  # the model answered the first turn
    return client, owner, timeline, call, pair


async def check_every_frame_arrived(sim: BaseSimulator, sent: int, frames: Any) -> list[int]:
    """Wait until frames ``0..sent-1`` reached the simulator; every arrival, in order."""

    def arrived(s: BaseSimulator) -> bool:
        seen = set()
        for conn in s.connections:
            seen.update(frames(conn.audio_in))
        return seen >= set(range(sent))

    await sim.wait_for(arrived, timeout=scaled(10))
    seqs: list[int] = []
    for conn in sim.connections:
        seqs += frames(conn.audio_in)
    return seqs
