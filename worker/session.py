"""One voice session on one worker: the provider client, its input, events and commands.

A :class:`SessionRunner` runs for one lease epoch. It connects its provider client (fresh, or
continuing a session another worker owned: ``reconnected`` with the strategy), feeds it the
input stream's audio and commands in order, and turns every provider event into an output
entry, in provider order. Its lifecycle is a table (:data:`TRANSITIONS`)::

    starting -> live -> closing      -> ended   (disconnect command or the provider closed)
                     -> handing-off  -> ended   (SIGTERM drain: lease released, job re-enqueued)
       any   -> fenced               -> ended   (the lease was lost: stop at once, write nothing)

Cursors: ``last_id`` is the last input entry handed to the provider client. The record's
``cursor`` (where a new owner starts reading) trails it by :data:`CURSOR_LAG_S`, because a frame
handed to the client may still sit in its send buffer or socket when the process is killed: after
a crash the new owner re-sends at most that much audio rather than lose any. Commands are never
applied twice: ``cmd_cursor`` is saved with the first write after a command. On a graceful
hand-off the exact ``last_id`` is saved after the provider connection closed cleanly.

Provider-side resumption restores an older state (a Gemini handle: the session as of the moment
it was issued), so the frames handed after that moment are missing from a resumed session, even
those before ``cursor``. A client that can resume exports how many of its frames the state
includes (``input_frames``); :class:`InputPositions` maps that to the entry id of the last of
them, saved in ``pstate`` as ``input_after``, and a new owner that resumed reads after that entry
instead of ``cursor`` (commands before ``cmd_cursor`` are still skipped).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel

from protocol import (
    AudioEvent,
    ConnectionEvent,
    DtmfEvent,
    ErrorEvent,
    ProviderConnectionError,
    ProviderError,
    ProviderTarget,
    RealtimeAudioClient,
    RealtimeSessionConfig,
    RealtimeToolResponse,
    ResponseDoneEvent,
    ToolCallCancelledEvent,
    ToolCallEvent,
    TranscriptEvent,
    VoicegridError,
    parse_config,
)
from protocol.backoff import Backoff
from protocol.errors import ConfigError, EntryTooLarge, StreamEntryError, UsageError
from protocol.events import EVENT_NAMES
from protocol.keys import SessionKeys
from protocol.streams import (
    CLOSED_TTL_S,
    CONNECT_REF,
    AudioEntry,
    Command,
    DisconnectCommand,
    DtmfCommand,
    PingCommand,
    PlaybackCommand,
    RequestResponseCommand,
    SessionRecord,
    StateField,
    ToolResponseCommand,
    UpdateConfigCommand,
    decode_input,
    encode_ack,
    encode_event,
    entry_id_key,
    now_us,
)
from providers import check_options, create_client
from redisio.lease import Lease, WriteMode
from redisio.metrics import (
    AUDIO_SECONDS,
    FIRST_AUDIO_LATENCY,
    FRAMES,
    INGRESS_TO_PROVIDER_LATENCY,
    MALFORMED_ENTRIES,
    PROVIDER_ERRORS,
    RECONNECTS,
    RESUME_BUFFER_DROPS,
    RESUMPTIONS,
    START_FAILURES,
    TOOL_CALL_ROUNDTRIP,
)
from redisio.pumps import OutputPump, ReaderPump, WriteBatch

from . import failover
from .conversation import ConversationLog, replay_config
from .settings import WorkerSettings


class SessionHost(Protocol):
    """What a session needs from the worker process that runs it (``WorkerRuntime``)."""

    settings: WorkerSettings
    reader: ReaderPump
    writer: OutputPump

    def renew_soon(self) -> None:
        """Renew the leases now (a session just learned something worth saving)."""

    def released(self, runner: SessionRunner) -> None:
        """``runner`` has ended; forget it."""


__all__ = [
    "CONNECT_TIMEOUT_S",
    "CURSOR_LAG_S",
    "TRANSITIONS",
    "InputPositions",
    "Phase",
    "SessionRunner",
    "StartKind",
    "reconnect_reason",
]

log = logging.getLogger("voicegrid.worker.session")

#: How far the saved input cursor trails the last entry handed to the provider client.
CURSOR_LAG_S = 0.1
#: Seconds a provider connect may take before the session fails (or the takeover retries).
CONNECT_TIMEOUT_S = 15.0
#: Connect attempts when taking a session over (a new session reports its first failure).
TAKEOVER_CONNECT_ATTEMPTS = 3
#: Seconds for a graceful provider disconnect during close, hand-off or fencing.
DISCONNECT_TIMEOUT_S = 5.0
#: Caller frames an :class:`InputPositions` remembers: 20 s of 20 ms frames, twice what the input
#: stream keeps (a resumption point further back can only be re-read from the stream's start).
MAX_POSITIONS = 1000

# labelled series of the per-frame metrics, resolved once: ``labels()`` on every frame costs a
# lock and a lookup, about 1.4 µs per call (bench/README.md). The counters are also added to once
# per batch of frames (a read's entries, a write round's events), not once per frame: every
# ``inc`` takes a lock
_FRAMES_IN = FRAMES.labels("in")
_FRAMES_OUT = FRAMES.labels("out")
_AUDIO_SECONDS_IN = AUDIO_SECONDS.labels("in")
_AUDIO_SECONDS_OUT = AUDIO_SECONDS.labels("out")

StartKind = Literal["new", "takeover", "handoff"]
EndReason = Literal["closed", "error", "handoff", "fenced"]


def reconnect_reason(event: ConnectionEvent) -> str:
    """The bounded metric label for a provider reconnect (its free-text reason never is one)."""
    text = (event.reason or "").lower()
    for needle, label in (("goaway", "goaway"), ("recycle", "recycle"), ("config", "config")):
        if needle in text:
            return label
    return "drop"


class InputPositions:
    """The input entries whose audio a provider client took, in order, by their count.

    A client that resumes provider-side exports how many of the frames its ``send_audio`` took
    its resumable state includes (``input_frames``, see ``GeminiLiveClient.export_state``);
    :meth:`entry` turns that count into the entry id of the last of them (``start``, where this
    owner began reading, for 0): a new owner reads after it, so what the state lacks is sent
    again. Counts only ever grow, so the ids before a mapped one are forgotten.
    """

    def __init__(self, start: str) -> None:
        self._base = start  # the entry of frame number `_base_count` (0: none yet)
        self._base_count = 0
        self._ids: deque[str] = deque()

    def fed(self, entry_id: str) -> None:
        """The client took the audio of ``entry_id`` (its next frame)."""
        if len(self._ids) >= MAX_POSITIONS:
            self._base = self._ids.popleft()
            self._base_count += 1
        self._ids.append(entry_id)

    def entry(self, count: int) -> str:
        """The entry id of frame number ``count`` (or the oldest one still known)."""
        while self._base_count < count and self._ids:
            self._base = self._ids.popleft()
            self._base_count += 1
        return self._base


class Phase(enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    CLOSING = "closing"
    HANDING_OFF = "handing-off"
    FENCED = "fenced"
    ENDED = "ended"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset(
        {Phase.LIVE, Phase.CLOSING, Phase.HANDING_OFF, Phase.FENCED, Phase.ENDED}
    ),
    Phase.LIVE: frozenset({Phase.CLOSING, Phase.HANDING_OFF, Phase.FENCED}),
    Phase.CLOSING: frozenset({Phase.ENDED, Phase.FENCED}),
    Phase.HANDING_OFF: frozenset({Phase.ENDED, Phase.FENCED}),
    Phase.FENCED: frozenset({Phase.ENDED}),
    Phase.ENDED: frozenset(),
}


class SessionRunner:
    """Runs one session for one lease epoch on this worker (see the module docstring)."""

    def __init__(self, runtime: SessionHost, lease: Lease, record: SessionRecord) -> None:
        self.runtime = runtime
        self.lease = lease
        self.keys: SessionKeys = lease.keys
        self.session_id = lease.keys.session_id
        self.record = record
        self.provider = record.provider
        self.kind: StartKind
        if record.status == "pending" and record.epoch <= 1:
            self.kind = "new"
        elif record.handoff and record.handoff == lease.epoch - 1:
            self.kind = "handoff"
        else:
            self.kind = "takeover"
        self.phase = Phase.STARTING
        self.end_reason: EndReason = "closed"
        self.client: RealtimeAudioClient | None = None
        self.config = parse_config(record.config)
        # which provider options a caller may set is the operator's decision (bounded): a
        # record from any producer is held to it
        check_options(self.provider, record.options, allowed=runtime.settings.caller_options)
        self._limits = runtime.settings.limits
        self._max_audio_bytes = self._limits.audio_bytes(self.config.input_audio)
        self.conversation = ConversationLog(record.conversation)
        self.strategy: Literal["resumed", "replayed"] | None = None
        # True when the provider client could not restore its session (the worker replayed
        # the conversation summary): the new provider session knows no pending tool call
        self._worker_replayed = False
        # the model turn whose output was published but not its response-done ("": none),
        # saved with the write that changes it; a new owner closes the previous owner's as
        # failed right after ``reconnected``
        self._open_response = record.open_response
        self._inherited_response = record.open_response if self.kind != "new" else ""
        # the connect acknowledgement answers the create request (its entry id)
        self._connect_ref = record.request or CONNECT_REF
        # input
        self.last_id = record.cursor
        self._last_key = entry_id_key(record.cursor)
        self._cmd_key = entry_id_key(record.command_cursor)
        self._handed: deque[tuple[float, str]] = deque()
        self._saved_cursor = record.cursor
        self._held: list[tuple[bytes, dict[bytes, bytes]]] = []
        self._holding = False
        # output
        self._outbox: list[dict[str, Any]] = []
        self._outbox_t: list[float] = []
        self._record_updates: dict[str, bytes] = {}
        self._final: tuple[WriteMode, float] | None = None
        self._pstate = orjson.dumps(record.provider_state)
        self._pstate_version = -1  # the client's state_version when pstate was last exported
        # input entries by the client's frame count, when the client resumes provider-side
        self._positions: InputPositions | None = None
        self._resume_drops = 0  # the client's resumption-buffer drops already counted
        # per-frame counters not yet added to the Prometheus series (see _flush_out_metrics)
        self._out_frames = 0
        self._out_seconds = 0.0
        # bookkeeping
        self._ended = asyncio.Event()
        self._handoff_requested = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._speech_stopped_at: float | None = None
        self._tool_calls: dict[str, float] = {}
        self._closed_sent = False

    # --- lifecycle -----------------------------------------------------------------------------

    def _to(self, phase: Phase) -> None:
        if phase is self.phase:
            return
        if phase not in TRANSITIONS[self.phase]:
            raise UsageError(
                f"session {self.session_id}: illegal transition {self.phase.value} -> {phase.value}"
            )
        self.phase = phase

    async def run(self) -> EndReason:
        """Connect, relay until the session ends here, and return why it ended."""
        try:
            await self._start()
        except Exception as exc:
            if isinstance(exc, VoicegridError):  # an expected failure: the message says it all
                log.warning("session %s failed to start: %s", self.session_id, exc)
            else:
                log.exception("session %s failed to start", self.session_id)
            if self.phase is Phase.STARTING:
                await self._fail(exc)
        await self._ended.wait()
        for task in list(self._tasks):
            task.cancel()
        return self.end_reason

    async def _start(self) -> None:
        creds = failover.credentials(self.runtime.settings, self.provider)
        api_key, url = creds["api_key"], creds["url"]
        # credentials and endpoints are this worker's configuration, never the record's
        options = {k: v for k, v in self.record.options.items() if k not in ("api_key", "url")}

        def new_client() -> RealtimeAudioClient:
            if self.config.fallbacks:
                primary = ProviderTarget(
                    provider=self.provider, model=self.record.model, options=options
                )
                client = failover.build_client(self.runtime, primary, self.config.fallbacks)
            else:
                client = create_client(
                    self.provider, model=self.record.model, api_key=api_key, url=url, **options
                )
            self.client = client
            self._pstate_version = -1  # a new client counts from 0 again
            for name in sorted(EVENT_NAMES):
                client.on(name, self._handler(name))  # type: ignore[arg-type]
            return client

        client = new_client()
        connect_config = self.config
        attempts = 1
        if self.kind != "new":
            attempts = TAKEOVER_CONNECT_ATTEMPTS
            self._emit("reconnecting", ConnectionEvent(reason=self.kind))
        backoff = Backoff(first=0.5, cap=2.0)
        for attempt in range(1, attempts + 1):
            if self.kind != "new":
                if attempt > 1:
                    client = new_client()  # a failed attempt leaves no state behind
                connect_config = self._restore(client, last=attempt == attempts)
            try:
                await asyncio.wait_for(client.connect(connect_config), CONNECT_TIMEOUT_S)
                break
            except (ProviderConnectionError, TimeoutError) as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "session %s: provider connect attempt %d failed (%s); retrying",
                    self.session_id,
                    attempt,
                    type(exc).__name__,
                )
                await backoff.wait()
        if self.phase is not Phase.STARTING:
            return  # fenced while connecting
        self._to(Phase.LIVE)
        capabilities = client.capabilities.model_dump(mode="json")
        if self.kind == "new":
            self._record_updates[StateField.STATUS] = b"live"
            self._record_updates[StateField.CAPABILITIES] = orjson.dumps(capabilities)
            self._push(
                encode_ack(
                    self._connect_ref, epoch=self.lease.epoch, result={"capabilities": capabilities}
                )
            )
        else:
            RESUMPTIONS.labels(self.provider, self.strategy or "replayed").inc()
        self._record_updates[StateField.HANDOFF] = b"0"
        self._record_updates[StateField.STARTS] = b"0"  # it got going: the reaper may retry it
        self.runtime.writer.mark(self)
        if self.strategy == "resumed":
            self._read_after_resumption_point()
        if client.capabilities.session_resumption:
            self._positions = InputPositions(self.last_id)
        await self.runtime.reader.add(
            self.keys.input, after=self.last_id, consumer=self.feed, on_error=self._input_rejected
        )
        if self._handoff_requested:
            await self.hand_off()

    def _restore(self, client: RealtimeAudioClient, *, last: bool) -> RealtimeSessionConfig:
        """Prepare ``client`` to continue the session; return the config to connect with.

        The provider client restores the session itself when it can (``import_state``), else
        the conversation summary is replayed in the instructions. Provider-side resumption can
        be refused on every attempt (an expired Gemini handle; Gemini refusing a resume while
        the previous owner's socket is still open, e.g. a stopped process): the last attempt
        then replays instead of ending the session.
        """
        strategy = None
        if not (last and self.strategy == "resumed"):
            strategy = client.import_state(self.record.provider_state)
        self.strategy = strategy or "replayed"
        self._worker_replayed = strategy is None
        if strategy is None:
            return replay_config(self.config, self.conversation)
        return self.config

    def _read_after_resumption_point(self) -> None:
        """A provider-side resume restored the state saved with ``pstate``: read the input
        after its last entry (``input_after``), not after ``cursor``. Entries between the two
        reached the previous owner's provider connection after that state was taken, so the
        resumed session lacks them; entries after ``cursor`` that the state holds are not sent
        twice. Commands keep their own cursor and are never applied again."""
        after = self.record.provider_state.get("input_after")
        if not isinstance(after, str):
            return
        try:
            key = entry_id_key(after)
        except StreamEntryError:
            log.warning("session %s: ignoring the invalid input_after %r", self.session_id, after)
            return
        log.info(
            "session %s: resumed; re-reading the input after %s (cursor %s)",
            self.session_id,
            after,
            self.last_id,
        )
        self.last_id = after
        self._last_key = key

    async def _fail(self, exc: BaseException) -> None:
        """The provider connection could not be made: report it and close the session."""
        error = exc if isinstance(exc, VoicegridError) else None
        code = exc.code if isinstance(exc, ProviderError) else "connect_failed"
        message = str(exc) if error is not None else f"{type(exc).__name__}: {exc}"
        PROVIDER_ERRORS.labels(self.provider, code, "false").inc()
        START_FAILURES.labels("provider").inc()
        self._emit("error", ErrorEvent(code=code, message=message, recoverable=False))
        if self.kind == "new":
            self._push(
                encode_ack(
                    self._connect_ref,
                    epoch=self.lease.epoch,
                    error=error or ProviderConnectionError(message, code=code, recoverable=False),
                )
            )
        self._emit_closed(ConnectionEvent(reason="connect_failed"))
        self.end_reason = "error"
        self._to(Phase.CLOSING)
        if self.client is not None:
            await self._quiet_disconnect()
        await self._finish("close")

    async def _finish(self, mode: WriteMode) -> None:
        """Write the last record fields (``mode`` releases or closes) and end the job."""
        self.runtime.reader.remove(self.keys.input)
        self._count_resume_drops()
        fields = self._checkpoint_fields(exact=True)
        if mode == "close":
            fields[StateField.STATUS] = b"closed"
        self._record_updates.update(fields)
        self._final = (mode, float(CLOSED_TTL_S))
        self.runtime.writer.mark(self)
        flushed = await self.runtime.writer.flush(self, within_s=DISCONNECT_TIMEOUT_S * 2)
        if not flushed:
            log.error("session %s: final write did not complete", self.session_id)
        if self.phase is not Phase.FENCED:
            self._to(Phase.ENDED)
        self._ended.set()

    async def _quiet_disconnect(self) -> None:
        assert self.client is not None
        try:
            await asyncio.wait_for(self.client.disconnect(), DISCONNECT_TIMEOUT_S)
        except Exception as exc:
            log.warning("session %s: provider disconnect failed: %r", self.session_id, exc)

    async def hand_off(self) -> None:
        """Drain: stop, save the exact cursor, release the lease, let another worker continue."""
        if self.phase is Phase.STARTING:
            self._handoff_requested = True
            return
        if self.phase is not Phase.LIVE:
            return
        self._to(Phase.HANDING_OFF)
        self.runtime.reader.remove(self.keys.input)
        assert self.client is not None
        self._save_provider_state()
        await self._quiet_disconnect()
        self._record_updates[StateField.HANDOFF] = str(self.lease.epoch).encode()
        self.end_reason = "handoff"
        await self._finish("release")

    def batch_fenced(self) -> None:
        """The lease is gone (writes rejected): stop at once, write nothing more."""
        if Phase.FENCED not in TRANSITIONS[self.phase]:
            return  # already fenced, or ended: nothing left to stop
        log.warning(
            "session %s: lease epoch %d lost; this worker stops the session",
            self.session_id,
            self.lease.epoch,
        )
        self._to(Phase.FENCED)
        self.end_reason = "fenced"
        self.runtime.reader.remove(self.keys.input)
        self._outbox.clear()
        self._outbox_t.clear()
        self._record_updates.clear()
        self._spawn(self._stop_fenced())

    async def _stop_fenced(self) -> None:
        if self.client is not None:
            await self._quiet_disconnect()
        self._ended.set()

    def _input_rejected(self, exc: Exception) -> None:
        """Redis refuses to read this session's input stream (the key holds another type): the
        session cannot go on; the worker's other sessions are not affected."""
        if self.phase is not Phase.LIVE:
            return
        message = f"session {self.session_id}: Redis rejects reading its input stream: {exc}"
        log.error("%s; closing the session", message)
        self._emit("error", ErrorEvent(code="input_rejected", message=message, recoverable=False))
        self._emit_closed(ConnectionEvent(reason="input_rejected"))
        self.end_reason = "error"
        self._to(Phase.CLOSING)
        self._spawn(self._close_now())

    async def _close_now(self) -> None:
        await self._quiet_disconnect()
        await self._finish("close")

    def lease_renewed(self) -> None:
        """A renewal succeeded: entries held while the lease was unconfirmed go through."""
        if self.phase is Phase.LIVE and self._held and not self._holding:
            self._drain_held()

    # --- input ---------------------------------------------------------------------------------

    def feed(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Entries read from the input stream, in order (called by the reader)."""
        if self.phase is not Phase.LIVE:
            return
        if self._holding or self._held or not self.lease.locally_valid():
            # a serial command is running, or the lease may have lapsed (e.g. the process was
            # stopped): hand nothing to the provider until it is confirmed
            self._held.extend(entries)
            if not self.lease.locally_valid():
                self.runtime.renew_soon()
            return
        self._apply_all(entries)

    def _drain_held(self) -> None:
        held, self._held = self._held, []
        self._apply_all(held)

    def _apply_all(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        frames, audio_s = 0, 0.0
        try:
            for index, (entry_id, fields) in enumerate(entries):
                if self.phase is not Phase.LIVE:
                    return
                if self._holding:
                    self._held.extend(entries[index:])
                    return
                seconds = self._apply(entry_id.decode(), fields)
                if seconds is not None:
                    frames += 1
                    audio_s += seconds
        finally:
            if frames:
                _FRAMES_IN.inc(frames)
                _AUDIO_SECONDS_IN.inc(audio_s)

    def _apply(self, entry_id: str, fields: dict[bytes, bytes]) -> float | None:
        """Hand one entry to the provider client; the audio seconds of a relayed frame."""
        key = entry_id_key(entry_id)
        if key <= self._last_key:
            return None  # already handed to the provider (a re-delivered entry)
        self._last_key = key
        self.last_id = entry_id
        self._handed.append((time.monotonic(), entry_id))
        try:
            body = fields.get(b"b")
            if body is not None:  # refused before it is even parsed
                kind = fields.get(b"c", b"?")[:40].decode("ascii", "replace")
                self._limits.check_command(kind, len(body))
            entry = decode_input(fields)
        except EntryTooLarge as exc:
            self._refuse(entry_id, "too_large", "entry_too_large", exc)
            return None
        except StreamEntryError as exc:
            self._refuse(entry_id, "input", "malformed_entry", exc)
            return None
        if isinstance(entry, AudioEntry):
            return self._send_audio(entry_id, entry)
        if key > self._cmd_key:
            self._cmd_key = key
            self._command(entry_id, entry.command)
        return None

    def _refuse(self, entry_id: str, kind: str, code: str, problem: object) -> None:
        """An input entry (or part of one) is refused: a recoverable ``error`` event naming the
        entry and why, counted by ``kind``; nothing of it is forwarded, the session goes on."""
        MALFORMED_ENTRIES.labels(kind).inc()
        message = f"input entry {entry_id}: {problem}"
        self._emit("error", ErrorEvent(code=code, message=message, recoverable=True))

    def _send_audio(self, entry_id: str, entry: AudioEntry) -> float | None:
        """Relay one caller frame; its audio seconds, or None when the client rejected it."""
        assert self.client is not None
        if len(entry.data) > self._max_audio_bytes:
            try:
                self._limits.check_audio(len(entry.data), self.config.input_audio)
            except EntryTooLarge as exc:
                self._refuse(entry_id, "too_large", "entry_too_large", exc)
                return None
        try:
            self.client.send_audio(entry.data)
        except VoicegridError as exc:
            self._refuse(entry_id, "audio", "invalid_audio", exc)
            return None
        if self._positions is not None:
            self._positions.fed(entry_id)
        INGRESS_TO_PROVIDER_LATENCY.observe(max(0.0, (now_us() - entry.ts_us) / 1e6))
        return len(entry.data) / self.config.input_audio.bytes_per_second

    def _command(self, entry_id: str, command: Command) -> None:
        assert self.client is not None
        client = self.client
        try:
            if isinstance(command, ToolResponseCommand):
                responses = self._accepted_tool_responses(entry_id, command)
                if responses:
                    client.send_tool_response(responses)
            elif isinstance(command, RequestResponseCommand):
                client.request_response(command.instruction)
            elif isinstance(command, PingCommand):
                self._spawn(self._ping(entry_id))
            elif isinstance(command, UpdateConfigCommand):
                self._holding = True
                self._spawn(self._update_config(entry_id, command))
            elif isinstance(command, DisconnectCommand):
                self._holding = True
                self._spawn(self._disconnect(entry_id))
            elif isinstance(command, DtmfCommand):
                self._emit("dtmf", DtmfEvent(digit=command.digit))
            elif isinstance(command, PlaybackCommand):
                client.report_playback(command.response_id, command.played_ms)
        except VoicegridError as exc:
            self._emit("error", _error_event(exc, f"{command.type} command {entry_id}"))
        self._record_updates[StateField.COMMAND_CURSOR] = entry_id.encode()
        if self.conversation.changed:
            self._record_updates[StateField.CONVERSATION] = self.conversation.dumps()
        self.runtime.writer.mark(self)

    def _accepted_tool_responses(
        self, entry_id: str, command: ToolResponseCommand
    ) -> list[RealtimeToolResponse]:
        """The results of ``command`` the provider may get: each for a call this session issued
        and nobody answered yet, within the size limit. Each refused one is an ``error`` event
        (a provider rejects a result for a call it does not know, and may end the session); a
        late result for a cancelled call is dropped and logged."""
        now = time.perf_counter()
        cancelled = self.conversation.cancelled_calls()
        # the log is bounded (its oldest items go first); the calls issued on this owner are
        # also in _tool_calls until answered
        pending = set(self.conversation.pending_calls()) | set(self._tool_calls)
        accepted = []
        for response in command.responses:
            call_id = response.call_id
            if call_id in cancelled:
                # the provider session no longer knows the call (tool-call-cancelled was
                # published): sending the result would be an error there
                log.warning(
                    "session %s: dropped the late result of cancelled tool call %s",
                    self.session_id,
                    call_id,
                )
                continue
            if call_id not in pending:
                self._refuse(
                    entry_id,
                    "tool_call",
                    "unknown_tool_call",
                    f"tool result for call {call_id[:64]!r} refused: the session has no pending "
                    "tool call with that id (never issued, or already answered); it was not sent",
                )
                continue
            try:
                self._limits.check_tool_output(response)
            except EntryTooLarge as exc:
                self._refuse(entry_id, "too_large", "entry_too_large", exc)
                continue
            pending.discard(call_id)  # a second result for it, even in this command, is refused
            accepted.append(response)
            started = self._tool_calls.pop(call_id, None)
            if started is not None:
                TOOL_CALL_ROUNDTRIP.labels(self.provider).observe(now - started)
            self.conversation.add_tool_result(call_id, response.output)
        return accepted

    async def _ping(self, entry_id: str) -> None:
        assert self.client is not None
        try:
            alive = await asyncio.wait_for(self.client.ping(), 10.0)
        except Exception:
            alive = False
        self._push(encode_ack(entry_id, epoch=self.lease.epoch, result={"alive": bool(alive)}))

    async def _update_config(self, entry_id: str, command: UpdateConfigCommand) -> None:
        assert self.client is not None
        try:
            merged = self.config.merged(command.update)
            await self.client.update_config(command.update)
        except Exception as exc:
            error = exc if isinstance(exc, VoicegridError) else ConfigError(str(exc))
            self._push(encode_ack(entry_id, epoch=self.lease.epoch, error=error))
        else:
            self.config = merged
            self._record_updates[StateField.CONFIG] = orjson.dumps(merged.model_dump(mode="json"))
            self._push(encode_ack(entry_id, epoch=self.lease.epoch))
        finally:
            self._holding = False
        if self.phase is Phase.LIVE:
            self._drain_held()

    async def _disconnect(self, entry_id: str) -> None:
        if self.phase is not Phase.LIVE:
            return
        self._to(Phase.CLOSING)
        await self._quiet_disconnect()
        self._emit_closed(ConnectionEvent(reason="disconnect"))
        self._push(encode_ack(entry_id, epoch=self.lease.epoch))
        await self._finish("close")

    # --- output --------------------------------------------------------------------------------

    def _handler(self, name: str) -> Any:
        def handle(payload: BaseModel) -> None:
            self._on_provider_event(name, payload)

        return handle

    def _on_provider_event(self, name: str, payload: BaseModel) -> None:
        phase = self.phase
        if phase in (Phase.FENCED, Phase.ENDED, Phase.HANDING_OFF):
            return
        if phase is Phase.STARTING and name in ("error", "closed"):
            return  # a failed connect is reported once, by _fail
        continued = name == "connected" and self.kind != "new"
        if continued:
            name = "reconnected"
            payload = ConnectionEvent(reason=self.kind, strategy=self.strategy)
        self._observe(name, payload)
        if name == "closed":
            self._emit_closed(payload)
            if phase is Phase.LIVE:
                # the provider ended the session by itself (fatal error, or it gave up)
                self._to(Phase.CLOSING)
                self.end_reason = "closed"
                self._spawn(self._finish("close"))
            return
        self._emit(name, payload)
        if continued:
            self._close_inherited()
        elif isinstance(payload, AudioEvent):
            if payload.response_id and payload.response_id != self._open_response:
                self._set_open_response(payload.response_id)
        elif isinstance(payload, ResponseDoneEvent):
            if self._open_response and payload.response_id in (None, self._open_response):
                self._set_open_response("")
            self._save_provider_state()

    def _set_open_response(self, response_id: str) -> None:
        # queued after the event that changed it, so both go out in the same fenced write: a
        # crash can never leave a closed turn marked open (a second response-done) or an
        # open turn unmarked (none)
        self._open_response = response_id
        self._record_updates[StateField.OPEN_RESPONSE] = response_id.encode()
        self.runtime.writer.mark(self)

    def _close_inherited(self) -> None:
        """Right after ``reconnected``: close what the previous owner left open, once.

        A model turn cut by the crash gets its ``response-done`` (``failed``, as a provider
        reports a reply cut by a connection loss). When the worker replayed the conversation
        itself, the new provider session knows none of the tool calls still waiting for a
        result: they are reported as ``tool-call-cancelled`` and their late results dropped.
        A client that restored its session (``resumed``/``replayed`` from ``import_state``)
        keeps its calls valid or reports lost ones itself.
        """
        if self._inherited_response:
            response_id, self._inherited_response = self._inherited_response, ""
            self._emit("response-done", ResponseDoneEvent(response_id=response_id, status="failed"))
            if self._open_response == response_id:
                self._set_open_response("")
        if self._worker_replayed:
            pending = self.conversation.pending_calls()
            if pending:
                for call_id in pending:
                    self.conversation.add_tool_cancelled(call_id)
                    self._tool_calls.pop(call_id, None)
                self._emit("tool-call-cancelled", ToolCallCancelledEvent(call_ids=pending))

    def _observe(self, name: str, payload: BaseModel) -> None:
        """Metrics and the conversation log, per event."""
        if isinstance(payload, AudioEvent):
            self._out_frames += 1
            fmt = self.config.output_audio
            self._out_seconds += len(payload.data) / (payload.sample_rate * fmt.bytes_per_sample)
            if self._speech_stopped_at is not None:
                FIRST_AUDIO_LATENCY.labels(self.provider).observe(
                    time.perf_counter() - self._speech_stopped_at
                )
                self._speech_stopped_at = None
        elif name == "speech-stopped":
            self._speech_stopped_at = time.perf_counter()
        elif isinstance(payload, ToolCallEvent):
            if len(self._tool_calls) < 256:
                self._tool_calls[payload.call_id] = time.perf_counter()
            self.conversation.add_tool_call(payload.call_id, payload.name, payload.arguments)
        elif isinstance(payload, ToolCallCancelledEvent):
            for call_id in payload.call_ids:
                self._tool_calls.pop(call_id, None)
                self.conversation.add_tool_cancelled(call_id)
        elif isinstance(payload, TranscriptEvent):
            if payload.final:
                self.conversation.add_message(payload.role, payload.text)
        elif isinstance(payload, ErrorEvent):
            PROVIDER_ERRORS.labels(
                self.provider, payload.code, "true" if payload.recoverable else "false"
            ).inc()
        elif name == "reconnecting" and isinstance(payload, ConnectionEvent):
            RECONNECTS.labels(self.provider, reconnect_reason(payload)).inc()
        elif name == "reconnected" and isinstance(payload, ConnectionEvent):
            if payload.strategy == "failover":
                self.provider = failover.count_failover(self.provider, payload)
            elif self.phase is Phase.LIVE:  # the provider client's own reconnect
                RESUMPTIONS.labels(self.provider, payload.strategy or "replayed").inc()
        elif isinstance(payload, ResponseDoneEvent):
            self._speech_stopped_at = None

    def _emit_closed(self, payload: BaseModel) -> None:
        if not self._closed_sent:
            self._closed_sent = True
            self._emit("closed", payload)

    def _emit(self, name: str, payload: BaseModel) -> None:
        self._push(encode_event(name, payload, epoch=self.lease.epoch))

    def _push(self, fields: dict[str, Any]) -> None:
        if self.phase is Phase.FENCED:
            return
        self._outbox.append(fields)
        self._outbox_t.append(time.perf_counter())
        if self.conversation.changed:
            # saved in the same fenced write as the event that changed it
            self._record_updates[StateField.CONVERSATION] = self.conversation.dumps()
        self.runtime.writer.mark(self)

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, now: float) -> None:
        """Periodic: save the trailing input cursor, the conversation and the provider's
        exported state when they changed."""
        if self.phase is not Phase.LIVE:
            return
        fields = self._checkpoint_fields(exact=False, now=now)
        # a Gemini handle arrives just after the turn it covers ends: save it within a
        # checkpoint interval, not a renewal, so a takeover resumes the latest turn
        fields.update(self._save_provider_state(queue=False))
        if fields:
            self._record_updates.update(fields)
            self.runtime.writer.mark(self)

    def renew_fields(self) -> dict[str, bytes]:
        """Record fields to save with the next lease renewal (the provider's exported state)."""
        if self.phase is not Phase.LIVE:
            return {}
        self._count_resume_drops()
        return self._save_provider_state(queue=False)

    def _count_resume_drops(self) -> None:
        """Add what the client's resumption buffer dropped since the last look to the metric."""
        stats = getattr(self.client, "resume_stats", None)
        dropped = getattr(stats, "dropped_messages", 0)
        if isinstance(dropped, int) and dropped > self._resume_drops:
            RESUME_BUFFER_DROPS.labels(self.provider).inc(dropped - self._resume_drops)
            self._resume_drops = dropped

    def _save_provider_state(self, *, queue: bool = True) -> dict[str, bytes]:
        if self.client is None:
            return {}
        version = self.client.state_version
        if version == self._pstate_version:
            return {}  # nothing the export depends on changed: no need to build it
        self._pstate_version = version
        try:
            exported = dict(self.client.export_state())
            # a resumption point in the client's own frame count: saved as an input entry id
            frames = exported.pop("input_frames", None)
            if self._positions is not None and type(frames) is int:
                exported["input_after"] = self._positions.entry(frames)
            state = orjson.dumps(exported)
        except Exception:
            log.exception("session %s: export_state failed", self.session_id)
            return {}
        if state == self._pstate:
            return {}
        self._pstate = state
        fields = {StateField.PROVIDER_STATE: state}
        if queue:
            self._record_updates.update(fields)
            self.runtime.writer.mark(self)
        return fields

    def _checkpoint_fields(self, *, exact: bool, now: float | None = None) -> dict[str, bytes]:
        fields: dict[str, bytes] = {}
        if exact:
            cursor = self.last_id
            self._handed.clear()
        else:
            horizon = (time.monotonic() if now is None else now) - CURSOR_LAG_S
            cursor = self._saved_cursor
            while self._handed and self._handed[0][0] <= horizon:
                cursor = self._handed.popleft()[1]
        if cursor != self._saved_cursor:
            self._saved_cursor = cursor
            fields[StateField.CURSOR] = cursor.encode()
        if self.conversation.changed:
            fields[StateField.CONVERSATION] = self.conversation.dumps()
        return fields

    # --- the writer's side ---------------------------------------------------------------------

    def _flush_out_metrics(self) -> None:
        """Add the output frames counted since the last write round to the counters."""
        if self._out_frames:
            _FRAMES_OUT.inc(self._out_frames)
            _AUDIO_SECONDS_OUT.inc(self._out_seconds)
            self._out_frames, self._out_seconds = 0, 0.0

    def take_batch(self) -> WriteBatch | None:
        self._flush_out_metrics()
        if self.phase is Phase.FENCED:
            return None
        if not self._outbox and not self._record_updates and self._final is None:
            return None
        mode, ttl = self._final if self._final is not None else ("keep", 0.0)
        batch = WriteBatch(
            entries=self._outbox,
            enqueued_at=self._outbox_t,
            fields=self._record_updates,
            mode=mode,
            close_ttl_s=ttl,
        )
        self._outbox, self._outbox_t, self._record_updates = [], [], {}
        self._final = None
        return batch

    def restore_batch(self, batch: WriteBatch) -> None:
        if self.phase is Phase.FENCED:
            return
        self._outbox[:0] = batch.entries
        self._outbox_t[:0] = batch.enqueued_at
        self._record_updates = {**batch.fields, **self._record_updates}
        if batch.mode != "keep" and self._final is None:
            self._final = (batch.mode, batch.close_ttl_s)

    def batch_written(self, batch: WriteBatch) -> None:
        if batch.mode == "release":
            self.runtime.released(self)

    # --- helpers -------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s task failed", self.session_id, exc_info=task.exception())


def _error_event(exc: VoicegridError, what: str) -> ErrorEvent:
    code = exc.code if isinstance(exc, ProviderError) else type(exc).__name__
    return ErrorEvent(code=code, message=f"{what}: {exc}", recoverable=True)
