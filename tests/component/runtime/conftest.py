"""Fixtures for the runtime component tests: fakeredis, in-process workers, a fake provider.

``FakeProvider`` is a test double registered as provider ``"fake"``: an in-memory
``RealtimeAudioClient`` that echoes caller audio back as model audio and answers commands with
the events a real provider would send. Every client it creates is recorded in ``FAKE_CLIENTS``
under the ``tag`` option, so a test can see what reached "the provider".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Literal

import arq.worker
import fakeredis
import orjson
import pytest
from arq.connections import ArqRedis

from ingress import RedisRealtimeClient
from protocol import (
    AudioEvent,
    ConfigUpdatedEvent,
    ConnectionEvent,
    ProviderAuthError,
    RealtimeAudioClient,
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    ResponseDoneEvent,
    SessionState,
    ToolCallEvent,
    TranscriptEvent,
    parse_config,
    parse_update,
)
from protocol.audio import check_frame
from protocol.keys import Keys
from protocol.options import OptionRule
from providers import register_provider
from worker.runtime import WorkerRuntime, run_worker
from worker.settings import WorkerSettings

#: Scales every wait in these tests (raise it on a slow machine).
TIME_SCALE = 1.0
NAMESPACE = "vgtest"

FAKE_CLIENTS: dict[str, list[FakeProvider]] = {}


class FakeProvider(RealtimeAudioClient):
    """In-memory provider client (test double); see the module docstring."""

    provider: ClassVar[str] = "fake"
    capabilities: ClassVar[RealtimeCapabilities] = RealtimeCapabilities(
        request_response=True, config_update="in-place", session_resumption=True
    )

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        url: str | None = None,
        tag: str = "default",
        echo: bool = True,
    ) -> None:
        super().__init__(model=model)
        self.tag = tag
        self.echo = echo
        self.config: RealtimeSessionConfig | None = None
        self.frames: list[bytes] = []
        self.tool_responses: list[RealtimeToolResponse] = []
        self.requests: list[str | None] = []
        self.imported: dict[str, Any] | None = None
        self.disconnected = False
        FAKE_CLIENTS.setdefault(tag, []).append(self)

    async def connect(self, config: RealtimeSessionConfig) -> None:
        if self.model == "reject-key":
            raise ProviderAuthError("invalid api key sk-...", code="invalid_api_key")
        self.config = parse_config(config)
        self._lifecycle.to(SessionState.CONNECTING)
        self._lifecycle.to(SessionState.LIVE)
        self.emit("connected", ConnectionEvent())

    async def disconnect(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.disconnected = True
        self._lifecycle.to(SessionState.CLOSED)
        self.emit("closed", ConnectionEvent(reason="client"))

    async def ping(self) -> bool:
        return self.connected

    def send_audio(self, frame: bytes) -> None:
        assert self.config is not None
        data = check_frame(frame, self.config.input_audio)
        self.frames.append(data)
        if self.echo:
            self.emit("audio", AudioEvent(data=data, sample_rate=24000, response_id="r1"))

    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        self.tool_responses.extend(responses)
        for response in responses:
            self.emit(
                "transcript",
                TranscriptEvent(role="assistant", text=f"result {response.output}", final=True),
            )
        self.emit("response-done", ResponseDoneEvent(response_id="r2"))

    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        update = parse_update(config)
        assert self.config is not None
        self.config = self.config.merged(update)
        self.emit("config-updated", ConfigUpdatedEvent(strategy="in-place"))

    def _request_response(self, instruction: str | None) -> None:
        self.requests.append(instruction)
        if instruction == "call a tool":
            self.emit(
                "tool-call",
                ToolCallEvent(call_id="call-1", name="weather", arguments={"city": "Paris"}),
            )
            return
        self.emit("transcript", TranscriptEvent(role="assistant", text="hello", final=True))
        self.emit("response-done", ResponseDoneEvent(response_id="r1"))

    def export_state(self) -> dict[str, Any]:
        return {"frames_seen": len(self.frames)}

    def import_state(self, state: dict[str, Any]) -> Literal["resumed", "replayed"] | None:
        self.imported = state
        return "resumed" if state else None


register_provider(
    "fake", FakeProvider, caller_options={"tag": OptionRule("text"), "echo": OptionRule("flag")}
)


@pytest.fixture(autouse=True)
def _no_arq_info(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakeredis has no INFO, which arq's worker logs at start-up (component tests only)."""

    async def skip(*_args: Any) -> None:
        return None

    monkeypatch.setattr(arq.worker, "log_redis_info", skip)


@pytest.fixture(autouse=True)
def _clear_fakes() -> None:
    FAKE_CLIENTS.clear()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def make_redis(server: fakeredis.FakeServer) -> Callable[[], ArqRedis]:
    keys = Keys(NAMESPACE)

    def make() -> ArqRedis:
        fake = fakeredis.FakeAsyncRedis(server=server)
        return ArqRedis(
            fake.connection_pool,
            job_serializer=orjson.dumps,
            job_deserializer=orjson.loads,
            default_queue_name=keys.queue,
        )

    return make


def worker_settings(**changes: Any) -> WorkerSettings:
    base = WorkerSettings(
        redis_url="redis://fake/0",
        max_sessions=10,
        metrics_port=0,
        lease_ttl_s=1.0 * TIME_SCALE,
        lease_renew_s=0.2 * TIME_SCALE,
        drain_timeout_s=5.0 * TIME_SCALE,
        namespace=NAMESPACE,
    )
    return dataclasses.replace(base, **changes)


@dataclasses.dataclass
class RunningWorker:
    runtime: WorkerRuntime
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Drain: hand sessions over, then return."""
        self.stop_event.set()
        await asyncio.wait_for(self.task, 10 * TIME_SCALE)

    async def crash(self) -> None:
        """Die without a drain (like SIGKILL): leases lapse, nothing is handed over."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def http_status(self, path: str) -> tuple[int, bytes]:
        assert self.runtime.http is not None
        status, _, body = self.runtime.http.route(path)
        return status, body


@pytest.fixture
async def start_worker(
    make_redis: Callable[[], ArqRedis],
) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    running: list[RunningWorker] = []

    async def start(**changes: Any) -> RunningWorker:
        settings = worker_settings(**changes)
        stop = asyncio.Event()
        started: asyncio.Future[WorkerRuntime] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_worker(settings, stop_event=stop, redis=make_redis(), started=started)
        )
        runtime = await asyncio.wait_for(started, 5 * TIME_SCALE)
        worker = RunningWorker(runtime, stop, task)
        running.append(worker)
        return worker

    yield start
    for worker in running:
        if not worker.task.done():
            worker.stop_event.set()
    for worker in running:
        if not worker.task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.task, 10 * TIME_SCALE)


@pytest.fixture
def make_client(
    make_redis: Callable[[], ArqRedis],
) -> Callable[..., RedisRealtimeClient]:
    def make(**options: Any) -> RedisRealtimeClient:
        options.setdefault("model", "fake-model")
        options.setdefault("provider", "fake")
        return RedisRealtimeClient(
            "redis://fake/0",
            namespace=NAMESPACE,
            connect_timeout_s=5 * TIME_SCALE,
            redis=make_redis(),
            **options,
        )

    return make


class Recorder:
    """Collects a client's events and lets a test wait for a condition on them."""

    def __init__(self, client: RealtimeAudioClient) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        for name in (
            "audio",
            "tool-call",
            "tool-call-cancelled",
            "transcript",
            "response-done",
            "config-updated",
            "connected",
            "reconnecting",
            "reconnected",
            "closed",
            "error",
        ):
            client.on(name, self._handler(name))  # type: ignore[arg-type]

    def _handler(self, name: str) -> Callable[[Any], None]:
        def handle(payload: Any) -> None:
            self.events.append((name, payload))
            self._changed.set()

        return handle

    def of(self, name: str) -> list[Any]:
        return [p for n, p in self.events if n == name]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within * TIME_SCALE):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``predicate`` holds, polling (for state that signals no event)."""
    async with asyncio.timeout(within * TIME_SCALE):
        while not predicate():  # noqa: ASYNC110 - polled state has no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
def fakes() -> dict[str, list[FakeProvider]]:
    """The fake provider clients created so far, by ``tag``."""
    return FAKE_CLIENTS


@pytest.fixture
def recorder() -> type[Recorder]:
    return Recorder


@pytest.fixture
def wait_until() -> Callable[[Callable[[], bool], float], Awaitable[None]]:
    return eventually
