"""Provider failover in the distributed runtime: a worker moves a session whose config names
``fallbacks`` to the next provider, and the shared breaker in Redis makes a second worker start
new sessions on the fallback at once."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from protocol import ProviderTarget, RealtimeSessionConfig
from protocol.keys import Keys
from protocol.options import parse_caller_options
from providers.simulator import GeminiSimulator, OpenAISimulator, SimScript
from redisio.health import ProviderBreaker

from ...support.frames import frame_numbers, numbered_frame
from ...support.timing import scaled

GEMINI = "gemini-2.5-flash-native-audio-preview-12-2025"
FRAME = 960
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "reconnect_attempts": 1}
#: the operator lets callers set the reconnect policy here, so the test needs no long waits
CALLER_OPTIONS = parse_caller_options(
    "backoff_initial_s:number:0..1,backoff_max_s:number:0..1,reconnect_attempts:int:1..3"
)
CONFIG = RealtimeSessionConfig(
    instructions="Be brief.",
    fallbacks=[ProviderTarget(provider="openai", model="gpt-realtime-mini", voice="marin")],
)


async def test_a_worker_moves_a_session_to_the_fallback_and_the_fleet_follows(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    script = SimScript(reply_text="From Gemini.", speed=0, tool_call=None)
    async with (
        GeminiSimulator(script) as primary,
        OpenAISimulator(SimScript(reply_text="From OpenAI.", speed=0, tool_call=None)) as fallback,
    ):
        # the fallback is OpenAI here; Gemini runs at the worker's Gemini URL
        await start_worker(
            gemini_url=primary.url,
            openai_url=fallback.url,
            openai_api_key="sk",
            caller_options=CALLER_OPTIONS,
        )
        client = make_client(provider="gemini", model=GEMINI, **FAST)
        events = recorder(client)
        await client.connect(CONFIG)
        seq = 0
        for i in range(55):
            client.send_audio(numbered_frame(seq, FRAME, speech=i < 25))
            seq += 1
        await events.wait_for(lambda: events.count("response-done") == 1)
        primary.refuse(503)
        await primary.drop(None)
        question = range(seq, seq + 40)
        for i in question:
            client.send_audio(numbered_frame(i, FRAME, speech=i < seq + 25))
        await events.wait_for(lambda: events.count("reconnected") == 1, within=10)
        (reconnected,) = events.of("reconnected")
        assert reconnected.strategy == "failover"
        assert (reconnected.provider, reconnected.model) == ("openai", "gpt-realtime-mini")
        # the ingress client now speaks for the fallback target
        assert (client.provider, client.model) == ("openai", "gpt-realtime-mini")
        assert client.capabilities.native_input_sample_rate == 24000  # OpenAI's, not Gemini's
        await events.wait_for(lambda: events.count("response-done") == 2, within=10)
        await fallback.wait_for(
            lambda s: question[-1] in frame_numbers(s.audio_in, FRAME), scaled(5)
        )
        got = frame_numbers(fallback.audio_in, FRAME)
        assert set(question) <= set(got) and len(got) == len(set(got))
        assert min(got) >= 25  # nothing of the answered utterance again
        session = fallback.connections[0].received[0]["session"]
        assert (
            "From Gemini." in session["instructions"]
            and session["audio"]["output"]["voice"] == "marin"
        )

        # the breaker saw Gemini fail: a new session on another worker starts on OpenAI
        await start_worker(
            gemini_url=primary.url,
            openai_url=fallback.url,
            openai_api_key="sk",
            caller_options=CALLER_OPTIONS,
        )
        breaker = ProviderBreaker(make_redis(), Keys("vgtest"), threshold=1)
        await breaker.record_failure(f"gemini/{GEMINI}")
        assert await breaker.state(f"gemini/{GEMINI}") == "open"
        rejected_before = len(primary.rejected)
        second = make_client(provider="gemini", model=GEMINI, **FAST)
        second_events = recorder(second)
        await second.connect(CONFIG)
        assert second_events.of("connected")[0].provider == "openai"
        assert len(primary.rejected) == rejected_before  # the open breaker skipped Gemini
        assert second.capabilities.message_truncation  # OpenAI's, from the connect ack
        await second.disconnect()
        await client.disconnect()


async def test_the_distributed_failover_gap_over_ten_runs(
    start_worker: Any, make_client: Any, recorder: Any, make_redis: Any
) -> None:
    """The primary's socket cut -> the caller's ``reconnected(strategy="failover")``, through a
    worker and Redis (fakeredis), over 10 sessions; p50/p99 printed and held to the bound
    ``docs/operations.md`` promises (the doc has the measured numbers)."""
    keys, redis = Keys("vgtest"), make_redis()
    gaps: list[float] = []
    async with (
        GeminiSimulator(SimScript(speed=0, tool_call=None)) as primary,
        OpenAISimulator(SimScript(speed=0, tool_call=None)) as fallback,
    ):
        await start_worker(
            gemini_url=primary.url,
            openai_url=fallback.url,
            openai_api_key="sk",
            caller_options=CALLER_OPTIONS,
        )
        loop = asyncio.get_running_loop()
        for _ in range(10):
            primary.refuse(None)
            await redis.delete(keys.provider_health(f"gemini/{GEMINI}"))  # each run starts fresh
            client = make_client(provider="gemini", model=GEMINI, **FAST)
            events = recorder(client)
            await client.connect(CONFIG)
            assert events.of("connected")[0].provider == "gemini"
            cut = loop.time()
            primary.refuse(503)
            await primary.drop(None)
            await events.wait_for(lambda e=events: e.count("reconnected") == 1, within=10)  # type: ignore[misc]
            gaps.append(loop.time() - cut)
            (reconnected,) = events.of("reconnected")
            assert (reconnected.strategy, reconnected.provider) == ("failover", "openai")
            await client.disconnect()
    gaps.sort()
    p50, p99 = statistics.median(gaps), gaps[-1]
    print(
        f"distributed failover gap over {len(gaps)} runs: p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms"
    )
    # docs/operations.md: p50 under 0.5 s, p99 under 2 s (loopback, fakeredis, 2 shared cores)
    assert p50 < scaled(0.5) and p99 < scaled(2.0)
