"""Tools of the fault suite (``test_fault_*.py``): sequence-numbered callers counted at the
provider, a private ``redis-server`` to freeze and restart, and the ledger of what was tried.

Every fault test records its counts (cases tried; frames sent, lost, duplicated, reordered;
takeover times) with :func:`record`. They are written to ``fault-counts.json`` in pytest's base
temporary directory and printed as a summary at the end of each fault module, with or without
``-s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from ingress import RedisRealtimeClient
from protocol import AudioFormat, RealtimeSessionConfig
from providers.simulator import SimScript
from providers.simulator.base import BaseSimulator

from ...support.cluster import have_redis_server, redis_server_command
from ...support.frames import numbered_frame as plain_frame
from ...support.net import free_port
from ...support.timing import scaled
from .conftest import FRAME_BYTES, Timeline

#: Sequence-numbered caller frames start with this marker plus the caller's index.
MARKER_BASE = 200
#: The session every fault test runs: 24 kHz PCM16 both ways (forwarded byte for byte).
CONFIG = RealtimeSessionConfig(
    instructions="You are a helpful agent.",
    input_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
    output_audio=AudioFormat(encoding="pcm16", sample_rate=24000),
)
#: A model that answers each turn quickly, without tool calls.
SCRIPT = SimScript(reply_text="Sure.", speed=4.0, tool_call=None)

_LEDGER: dict[str, dict[str, Any]] = {}


def record(name: str, **counts: Any) -> None:
    """Add the counts of one fault run to the ledger (``name`` is unique per run)."""
    _LEDGER[name] = counts


@pytest.fixture(scope="module", autouse=True)
def fault_ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Write and print the ledger after each fault module."""
    yield
    if not _LEDGER:
        return
    path = tmp_path_factory.getbasetemp() / "fault-counts.json"
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    existing.update(_LEDGER)
    path.write_text(json.dumps(existing, indent=1, sort_keys=True))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        # shown with or without -s: output capture is suspended while the summary is written
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            for name, counts in sorted(_LEDGER.items()):
                shown = ", ".join(f"{k}={v}" for k, v in counts.items())
                reporter.write_line(f"fault {name}: {shown}")
            reporter.write_line(f"fault counts written to {path}")
    _LEDGER.clear()


def json_values(*, max_size: int = 4, max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """Any JSON value (integers within 64 bits, as orjson takes them)."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=max_size)
            | st.dictionaries(st.text(max_size=8), inner, max_size=max_size)
        ),
        max_leaves=max_leaves,
    )


def draw(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` values drawn by hypothesis, to throw at something live afterwards (a live
    session cannot run inside hypothesis' synchronous test loop)."""
    found: list[Any] = []

    @settings(
        max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


async def write_entries(redis_url: str, stream: str, entries: list[dict[str, Any]]) -> None:
    """Append ``entries`` to ``stream`` as any producer could."""
    redis = Redis.from_url(redis_url)
    try:
        for entry in entries:
            await redis.xadd(stream, entry)
    finally:
        await redis.aclose()


# --- sequence-numbered callers --------------------------------------------------------------


def numbered_frame(marker: int, seq: int, *, speech: bool) -> bytes:
    """The runtime tests' caller frame (20 ms of 24 kHz PCM16 carrying ``seq``) with this
    caller's ``marker`` as its first sample, so the callers of one simulator are told apart."""
    return struct.pack("<h", marker) + plain_frame(seq, FRAME_BYTES, speech=speech)[2:]


def arrivals(sim: BaseSimulator) -> dict[int, list[int]]:
    """Per caller marker, the sequence numbers the provider received, in arrival order (its
    connections in the order they were opened)."""
    seen: dict[int, list[int]] = {}
    for conn in sim.connections:
        audio = conn.audio_in
        for offset in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES):
            marker, seq = struct.unpack_from("<hh", audio, offset)
            if marker >= MARKER_BASE:
                seen.setdefault(marker, []).append(seq)
    return seen


def tally(seqs: list[int], sent: int) -> dict[str, int]:
    """Frames ``0..sent-1`` against what arrived: lost, duplicated, reordered (an arrival
    earlier than one already seen that is not a re-send of a frame already seen)."""
    unique = set(seqs)
    reordered = 0
    top = -1
    seen: set[int] = set()
    for seq in seqs:
        if seq < top and seq not in seen:
            reordered += 1
        seen.add(seq)
        top = max(top, seq)
    return {
        "sent": sent,
        "lost": len(set(range(sent)) - unique),
        "duplicated": len(seqs) - len(unique),
        "reordered": reordered,
    }


class Talker(Timeline):
    """A caller sending numbered frames in real time (1 s of speech, 0.6 s of silence); its
    events are timed as a ``Timeline``'s."""

    def __init__(self, client: RedisRealtimeClient, index: int) -> None:
        super().__init__(client)
        self.client = client
        self.marker = MARKER_BASE + index
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connected(
        cls, redis_url: str, namespace: str, index: int, *, talking: bool = True
    ) -> Talker:
        """A new session's caller, connected (and talking unless ``talking`` is false)."""
        client = RedisRealtimeClient(
            redis_url,
            provider="openai",
            model="gpt-realtime",
            namespace=namespace,
            connect_timeout_s=scaled(20),
        )
        talker = cls(client, index)
        await client.connect(CONFIG)
        if talking:
            talker.start()
        return talker

    def start(self) -> None:
        self._task = asyncio.create_task(self._play())

    async def _play(self) -> None:
        start = time.monotonic()
        while self.client.connected:
            speech = self.sent % 80 < 50
            self.client.send_audio(numbered_frame(self.marker, self.sent, speech=speech))
            self.sent += 1
            await asyncio.sleep(max(0.0, start + self.sent * 0.02 - time.monotonic()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def of(self, name: str) -> list[Any]:
        return [payload for _, event, payload in self.events if event == name]

    async def at(self, name: str, *, after: float = 0.0, within: float = 10.0) -> float:
        """When event ``name`` arrived (the first after ``after``), waiting for it."""
        return (await self.wait(name, after=after, within=within))[0]


async def all_arrived(sim: BaseSimulator, talkers: list[Talker], within: float = 10.0) -> None:
    """Until every frame each talker sent reached the provider (or the time is up)."""

    def done(s: BaseSimulator) -> bool:
        got = arrivals(s)
        return all(set(got.get(t.marker, [])) >= set(range(t.sent)) for t in talkers)

    with contextlib.suppress(Exception):
        await sim.wait_for(done, timeout=scaled(within))


async def finish(sim: BaseSimulator, talkers: list[Talker], within: float = 10.0) -> dict[str, int]:
    """Stop talking, wait for the last frames, add up what the provider received (lost,
    duplicated, reordered), and detach the callers."""
    for talker in talkers:
        await talker.stop()
    await all_arrived(sim, talkers, within)
    got = arrivals(sim)
    totals = {"sent": 0, "lost": 0, "duplicated": 0, "reordered": 0}
    for talker in talkers:
        for key, value in tally(got.get(talker.marker, []), talker.sent).items():
            totals[key] += value
        await talker.client.detach()
    return totals


def summary(values: list[float]) -> dict[str, float]:
    """min / median / max, rounded for the ledger."""
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


# --- a private Redis to freeze and restart ---------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of this test alone on a free loopback port, without persistence (a
    restart loses every key, as a Redis without persistence or a failed-over empty replica)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._spawn()
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(OSError, Exception):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            redis_server_command(self.port, self.workdir, "--enable-debug-command", "local"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    async def restart(self) -> None:
        """Kill the server (no persistence: every key is gone) and start an empty one."""
        self.kill()
        await self.start()

    def freeze(self, seconds: float) -> subprocess.Popen[bytes]:
        """``DEBUG SLEEP``: the server answers nothing for ``seconds`` (it runs in the
        background; wait on the returned process)."""
        return subprocess.Popen(
            ["redis-cli", "-p", str(self.port), "DEBUG", "SLEEP", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    if not have_redis_server():
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    await server.start()
    yield server
    server.kill()
