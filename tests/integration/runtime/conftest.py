"""Integration fixtures: real Redis (``REDIS_URL``), real ``voicegrid worker`` processes, and the
OpenAI simulator started in the test process.

Every test gets its own key namespace (``VOICEGRID_NAMESPACE``), removed afterwards with the arq
keys of its jobs, so runs can share the machine's Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from ingress import RedisRealtimeClient

#: Scales every wait in these tests.
TIME_SCALE = 1.0
FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16
MAGIC = 77  # small: a silent frame must stay below the VAD threshold


def voicegrid_command() -> list[str]:
    script = Path(sys.executable).parent / "voicegrid"
    return (
        [str(script), "worker"]
        if script.exists()
        else [sys.executable, "-m", "worker.cli", "worker"]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
            voicegrid_command(), env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def http(self, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    async def wait_ready(self, within: float = 20.0) -> None:
        async with asyncio.timeout(within * TIME_SCALE):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if (await self.http("/readyz"))[0] == 200:
                        return
                await asyncio.sleep(0.05)

    async def metric(self, name: str, **labels: str) -> float:
        _, body = await self.http("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in body.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if got == want:
                return float(value)
        return 0.0

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self, within: float = 30.0) -> int:
        async with asyncio.timeout(within * TIME_SCALE):
            while self.proc.poll() is None:  # noqa: ASYNC110 - a child process has no event here
                await asyncio.sleep(0.02)
        return int(self.proc.returncode)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(10)
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


@pytest.fixture
def workers(namespace: str, redis_url: str, tmp_path: Path) -> Any:
    started: list[WorkerProcess] = []

    def start(name: str, sim_url: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            name,
            {
                "REDIS_URL": redis_url,
                "VOICEGRID_NAMESPACE": namespace,
                "VOICEGRID_OPENAI_URL": sim_url,
                "OPENAI_API_KEY": "sk-integration-test",
                "VOICEGRID_LOG_LEVEL": "INFO",
                **env,
            },
            tmp_path,
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def make_client(namespace: str, redis_url: str) -> Callable[[], RedisRealtimeClient]:
    def make() -> RedisRealtimeClient:
        return RedisRealtimeClient(
            redis_url,
            provider="openai",
            model="gpt-realtime",
            namespace=namespace,
            connect_timeout_s=20 * TIME_SCALE,
        )

    return make


def caller_frame(seq: int, *, speech: bool) -> bytes:
    """A 20 ms frame that carries its sequence number (sample 1) after a marker (sample 0)."""
    body = (
        b"".join(struct.pack("<h", 6000 if (i // 12) % 2 else -6000) for i in range(478))
        if speech
        else b"\x00\x00" * 478
    )
    return struct.pack("<hh", MAGIC, seq) + body


def frames_seen(audio: bytes) -> list[int]:
    """The sequence numbers of the caller frames in ``audio`` (one provider connection's input)."""
    seqs = []
    for offset in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES):
        marker, seq = struct.unpack_from("<hh", audio, offset)
        if marker == MAGIC:
            seqs.append(seq)
    return seqs


class Caller:
    """Plays caller audio in real time: 1 s of speech, 0.6 s of silence, repeated."""

    def __init__(self, client: RedisRealtimeClient) -> None:
        self.client = client
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._play())

    async def _play(self) -> None:
        start = time.monotonic()
        while True:
            speech = self.sent % 80 < 50
            self.client.send_audio(caller_frame(self.sent, speech=speech))
            self.sent += 1
            await asyncio.sleep(max(0.0, start + self.sent * 0.02 - time.monotonic()))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
def caller() -> Callable[[RedisRealtimeClient], Caller]:
    return Caller


@pytest.fixture
def frames() -> Callable[[bytes], list[int]]:
    return frames_seen
