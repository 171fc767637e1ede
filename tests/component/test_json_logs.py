"""``VOICEGRID_LOG_FORMAT=json``: every line a process prints is one JSON log record.

Real ``python -m voicegrid simulate``, ``worker`` and ``gateway`` processes (an embedded Redis,
DEBUG logs) carry one call from a WebSocket caller through the gateway and the worker to the
simulator; a session job with a bad epoch makes the worker log a traceback; SIGTERM stops all
three. Every line each process wrote to stdout and stderr, start-up to exit, must parse as JSON
with ``ts``, ``level``, ``logger`` and ``message`` (``voicegrid/logs.py``), and the traceback
must be inside one record's ``exception``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from protocol.keys import Keys
from redisio.jobs import JOB_NAME
from voicegrid.logs import JsonFormatter

from ..support.net import free_port, http_get, voicegrid_command, wait_until_serving
from ..support.recorder import silence, tone
from ..support.timing import eventually, scaled

RECORD_KEYS = {"ts", "level", "logger", "message"}
JSON_ENV = {"VOICEGRID_LOG_FORMAT": "json", "VOICEGRID_LOG_LEVEL": "DEBUG"}


class Process:
    """A ``voicegrid`` process whose stdout and stderr are read line by line as it runs."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.output: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.output["stdout"])),
            asyncio.create_task(self._read(proc.stderr, self.output["stderr"])),
        ]

    @classmethod
    async def start(cls, role: str, env: dict[str, str], *args: str) -> Process:
        proc = await asyncio.create_subprocess_exec(
            *voicegrid_command(role, *args),
            env={**os.environ, **JSON_ENV, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(role, proc)

    @staticmethod
    async def _read(stream: asyncio.StreamReader, lines: list[bytes]) -> None:
        while line := await stream.readline():
            lines.append(line)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def records(self, stream: str = "stderr") -> list[dict[str, Any]]:
        """The lines printed so far that parse as JSON objects."""
        found = []
        for line in self.output[stream]:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    async def wait_record(
        self, predicate: Callable[[dict[str, Any]], bool], stream: str = "stderr"
    ) -> dict[str, Any]:
        await eventually(lambda: any(map(predicate, self.records(stream))) or not self.alive, 20)
        assert self.alive, f"{self.name} exited: {self.transcript()}"
        return next(r for r in self.records(stream) if predicate(r))

    async def serving(self, port: int, path: str) -> None:
        await asyncio.to_thread(
            wait_until_serving, port, path, alive=lambda: self.alive, what=self.name
        )

    async def stop(self) -> int:
        """SIGTERM, then the exit code once both streams are read to the end."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), scaled(30))
        await asyncio.wait_for(asyncio.gather(*self._readers), scaled(10))
        return code

    async def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()

    def transcript(self) -> str:
        return b"".join(self.output["stdout"] + self.output["stderr"]).decode(errors="replace")


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        await process.kill()


async def one_call(gateway_port: int) -> list[dict[str, Any]]:
    """A caller's session through the gateway: start, speech, a reply, end; its text messages."""
    texts: list[dict[str, Any]] = []
    url = f"ws://127.0.0.1:{gateway_port}/v1/sessions"
    async with connect(url, open_timeout=scaled(10)) as ws:

        async def until(kind: str, *more: str) -> dict[str, Any]:
            async with asyncio.timeout(scaled(20)):
                while True:
                    message = await ws.recv()
                    if isinstance(message, str):
                        texts.append(orjson.loads(message))
                        if texts[-1]["type"] in (kind, *more):
                            return texts[-1]
                        assert texts[-1]["type"] != "error", texts[-1]

        start = {"type": "session.start", "provider": "openai", "model": "gpt-realtime"}
        await ws.send(orjson.dumps(start).decode())
        await until("session.started")
        audio = tone(500, 24000) + silence(700, 24000)
        for start in range(0, len(audio), 960):
            await ws.send(audio[start : start + 960])
        await until("response-done", "tool-call")
        await ws.send(orjson.dumps({"type": "session.end"}).decode())
        await until("closed")
    return texts


async def enqueue_a_bad_job(redis_url: str, namespace: str) -> None:
    """A session job whose epoch is no number: the worker's job fails with a traceback."""
    redis = ArqRedis(
        Redis.from_url(redis_url).connection_pool,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
    )
    try:
        keys = Keys(namespace)
        await redis.enqueue_job(JOB_NAME, "bad-epoch", "one", _queue_name=keys.queue)
    finally:
        await redis.aclose()


def non_records(process: Process) -> list[str]:
    """Every line of the process's output that is not one JSON log record, with its stream."""
    wrong = []
    for stream, lines in process.output.items():
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                wrong.append(f"{process.name} {stream}: {line!r}")
                continue
            if not isinstance(record, dict) or not record.keys() >= RECORD_KEYS:
                wrong.append(f"{process.name} {stream}: {line!r}")
    return wrong


async def test_every_line_of_every_process_is_a_json_record(
    embedded_redis_url: str, processes: list[Process]
) -> None:
    namespace = f"vgjson-{uuid.uuid4().hex[:8]}"
    common = {"REDIS_URL": embedded_redis_url, "VOICEGRID_NAMESPACE": namespace}
    sim_port, worker_port, gateway_port, gateway_metrics = (free_port() for _ in range(4))

    sim = await Process.start(
        "simulate",
        {"VOICEGRID_SIM_SPEED": "0"},
        *("--protocol", "openai", "--port", str(sim_port)),
    )
    processes.append(sim)
    ready = await sim.wait_record(lambda r: "url" in r, stream="stdout")
    worker = await Process.start(
        "worker",
        {
            **common,
            "VOICEGRID_OPENAI_URL": ready["url"],
            "OPENAI_API_KEY": "sk-json-logs",
            "VOICEGRID_METRICS_PORT": str(worker_port),
        },
    )
    processes.append(worker)
    gateway = await Process.start(
        "gateway",
        {
            **common,
            "VOICEGRID_GATEWAY_PORT": str(gateway_port),
            "VOICEGRID_METRICS_PORT": str(gateway_metrics),
        },
        *("--host", "127.0.0.1"),
    )
    processes.append(gateway)
    await worker.serving(worker_port, "/readyz")
    await gateway.serving(gateway_metrics, "/readyz")

    texts = await one_call(gateway_port)
    assert texts[-1]["type"] == "closed"
    await enqueue_a_bad_job(embedded_redis_url, namespace)
    failed = await worker.wait_record(lambda r: "Traceback" in r.get("exception", ""))
    assert "ValueError" in failed["exception"]
    assert (await asyncio.to_thread(http_get, worker_port, "/healthz"))[0] == 200  # it goes on

    codes = [await process.stop() for process in (gateway, worker, sim)]
    assert codes == [0, 0, 0], [p.transcript()[-2000:] for p in processes]
    assert [line for process in processes for line in non_records(process)] == []
    for process in processes:
        assert process.records(), f"{process.name} logged nothing"
        assert process.output["stderr"], f"{process.name} logged nothing on stderr"
    # the session left records in the worker and the gateway, each a single line
    session_id = next(t["session_id"] for t in texts if t["type"] == "session.started")
    assert any(session_id in r["message"] for r in worker.records())
    assert any(session_id in r["message"] for r in gateway.records())
    assert {r["level"] for p in processes for r in p.records()} >= {"DEBUG", "INFO", "ERROR"}


@pytest.mark.parametrize(
    ("role", "env", "code", "says"),
    [
        ("worker", {"VOICEGRID_MAX_SESSIONS": "lots"}, 2, "VOICEGRID_MAX_SESSIONS='lots'"),
        ("gateway", {"VOICEGRID_GATEWAY_PORT": "http"}, 2, "VOICEGRID_GATEWAY_PORT='http'"),
        ("simulate", {"VOICEGRID_SIM_SPEED": "-1"}, 2, "VOICEGRID_SIM_SPEED='-1'"),
        ("worker", {"VOICEGRID_METRICS_PORT": "{busy}"}, 1, "Traceback"),
        ("simulate", {}, 1, "cannot listen on"),
    ],
)
def test_start_up_failures_are_json_records_too(
    role: str, env: dict[str, str], code: int, says: str, embedded_redis_url: str
) -> None:
    with socket.socket() as busy:  # a port some other process listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        env = {k: v.replace("{busy}", port) for k, v in env.items()}
        args = ("--port", port) if role == "simulate" else ()
        result = subprocess.run(
            voicegrid_command(role, *args),
            env={**os.environ, **JSON_ENV, "REDIS_URL": embedded_redis_url, **env},
            capture_output=True,
            timeout=scaled(30),
        )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == code, lines
    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert all(r.keys() >= RECORD_KEYS for r in records), records
    assert any(says in r["message"] + r.get("exception", "") for r in records), records
    assert records[-1]["level"] == "ERROR"


def test_the_formatter_writes_one_line_with_extras_and_the_traceback() -> None:
    logger = logging.getLogger("voicegrid.test")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            __file__,
            1,
            "session %s failed",
            ("s-1",),
            sys.exc_info(),
            extra={"session_id": "s-1", "attempt": 2, "where": object()},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "session s-1 failed"
    assert (out["level"], out["logger"]) == ("ERROR", "voicegrid.test")
    assert out["ts"].endswith("+00:00") and "T" in out["ts"]
    assert (out["session_id"], out["attempt"]) == ("s-1", 2)
    assert out["where"].startswith("<object object")  # what JSON cannot hold, as its str
    assert out["exception"].startswith("Traceback (most recent call last):")
    assert out["exception"].endswith("RuntimeError: boom\nsecond line")
