"""The Gemini Live client: :class:`GeminiTranslator` plus the shared WebSocket transport.

All wire decisions live in the translator; this module wires them to the socket machinery of
:mod:`providers.transport` and adds what is Gemini-specific about the connection: credentials,
close-code classification, the proactive switch to a new connection on ``goAway``, and the
re-send of what a resumed session lacks (:mod:`providers.gemini.resume`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

from protocol.client import SessionState
from protocol.config import (
    RealtimeCapabilities,
    RealtimeSessionConfig,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    parse_config,
    parse_update,
)
from protocol.errors import (
    ConfigError,
    ConfigRejectedError,
    NotConnectedError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
)
from protocol.events import ConfigUpdatedEvent
from providers.translator import Signal
from providers.transport import (
    Endpoint,
    Frame,
    Strategy,
    TransportOptions,
    WebSocketRealtimeClient,
    check_api_key,
    check_instruction,
    check_ws_url,
    merge_options,
    parse_tool_responses,
    require_positive_ints,
)

from .resume import Resent, ResumeBuffer, ResumeStats
from .translator import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    GeminiTranslator,
    GoAway,
    ResumptionPoint,
    SetupComplete,
)

__all__ = ["CONSTRAINED_URL", "DEFAULT_URL", "GeminiLiveClient", "ResumeStats", "is_vertex_url"]

log = logging.getLogger("voicegrid.gemini")

#: The Gemini API (API key) endpoint.
DEFAULT_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
#: The endpoint for ephemeral tokens (``auth_tokens/...``), used when ``url`` is not given.
CONSTRAINED_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"
)

#: What every Vertex AI Live endpoint's path contains (``...aiplatform.v1beta1.LlmBidiService``).
_VERTEX_SERVICE = "/google.cloud.aiplatform."
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_EPHEMERAL_PREFIX = "auth_tokens/"
# Words in a 1007/1008 close reason that mean the credentials, not the config, were refused.
_AUTH_WORDS = ("api key", "api_key", "permission", "unauthenticated", "credential", "token")
# 16 kHz PCM16: bytes of wire audio per millisecond.
_WIRE_BYTES_PER_MS = INPUT_SAMPLE_RATE * 2 // 1000

_OPTION_DEFAULTS: dict[str, Any] = {
    "auth": "header",
    "bearer_token": None,
    "headers": None,
    "max_buffer_ms": 10_000,
    "reconnect_attempts": 5,
    "backoff_initial_s": 0.5,
    "backoff_max_s": 8.0,
    "ping_interval_s": None,
    "ping_timeout_s": 30.0,
    "open_timeout_s": 10.0,
    "handshake_timeout_s": 10.0,
    "go_away_margin_s": 5.0,
    "resume_wait_s": 5.0,
    "max_history": 200,
    "transparent_resumption": None,
    "resume_buffer_s": 10.0,
    "resume_buffer_bytes": 512_000,
    "resume_margin_s": 0.2,
}


def is_vertex_url(url: str) -> bool:
    """True for a Vertex AI ``LlmBidiService`` endpoint (any region, version or host)."""
    return _VERTEX_SERVICE in urllib.parse.urlsplit(url).path


class GeminiLiveClient(WebSocketRealtimeClient):
    """Gemini Live (``BidiGenerateContent``) over raw WebSockets, with seamless resumption.

    ``GeminiLiveClient(*, model, api_key=None, url=None, **options)``

    - ``model``: a model id (sent as ``models/<id>``) or an already qualified name
      (``models/...``, ``projects/.../publishers/google/models/...``, ``publishers/...``).
    - ``api_key``: defaults to ``GEMINI_API_KEY``. A key starting with ``auth_tokens/`` is an
      ephemeral token: it is sent as ``Authorization: Token <token>`` (``auth="header"``) or
      ``?access_token=<token>`` (``auth="query"``), and the default URL becomes
      :data:`CONSTRAINED_URL`. Without any credential ``connect`` raises ``ConfigError``, unless
      ``url`` is a loopback simulator. Keys never appear in logs, events or errors (logged URLs
      carry no query string).
    - ``url``: the ``BidiGenerateContent`` endpoint, default :data:`DEFAULT_URL` (v1beta). Vertex
      AI: ``wss://{LOCATION}-aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1beta1.``
      ``LlmBidiService/BidiGenerateContent`` with ``bearer_token=<OAuth access token>``, an
      optional ``headers={"x-goog-user-project": ...}`` and ``model="projects/P/locations/L/``
      ``publishers/google/models/<id>"``.

    Options (keyword; an unknown option raises ``ConfigError``):

    - ``auth`` (``"header"``): how the API key travels: ``"header"`` (``x-goog-api-key``) or
      ``"query"`` (``?key=``).
    - ``bearer_token`` (None): sends ``Authorization: Bearer <token>`` (Vertex AI); no API key
      is needed then.
    - ``headers`` (None): extra HTTP headers for the upgrade (e.g. ``x-goog-user-project``, or
      an ``Authorization`` header of your own, which also counts as a credential).
    - ``max_buffer_ms`` (10000): outgoing audio buffer in milliseconds of 16 kHz audio; when
      full the oldest audio is dropped, counted in ``audio_stats`` and reported once per
      overflow episode as a recoverable ``error`` event ``audio_buffer_overflow``.
    - ``reconnect_attempts`` (5), ``backoff_initial_s`` (0.5), ``backoff_max_s`` (8.0): tries
      per connection loss, with exponential backoff and jitter between them.
    - ``ping_interval_s`` (None), ``ping_timeout_s`` (30.0): keepalive pings are off by
      default because Gemini's pongs can take 8-30 s and a keepalive timeout would kill a
      healthy socket; ``ping()`` waits up to ``ping_timeout_s`` for its pong.
    - ``open_timeout_s`` (10), ``handshake_timeout_s`` (10): limits for the socket upgrade and
      for ``setupComplete``.
    - ``go_away_margin_s`` (5.0): after ``goAway`` the client switches connections at the first
      resumable point (no model turn open, no tool call pending, a resumable handle in hand), and
      at the latest ``min(go_away_margin_s, timeLeft / 2)`` seconds before ``timeLeft`` runs out.
    - ``resume_wait_s`` (5.0): how long ``update_config`` waits for a resumable point before it
      switches anyway (a turn in progress is then cut and reported ``incomplete``).
    - ``max_history`` (200): conversation entries kept to seed a new session when no handle
      can be used.
    - ``transparent_resumption`` (None: on for a Vertex AI URL, off otherwise): send
      ``sessionResumption.transparent``, so every handle says which client message its state
      ends with (``lastConsumedClientMessageIndex``). The Gemini Developer API does not know
      the field (google-genai refuses it there) and would close the session; only set it
      ``True`` there if the service gained it.
    - ``resume_buffer_s`` (10.0), ``resume_buffer_bytes`` (512000), ``resume_margin_s`` (0.2):
      the resumption buffer (see "What a resume re-sends" below): messages are kept at most
      ``resume_buffer_s`` after their socket took them and at most ``resume_buffer_bytes`` of
      wire JSON in all (about 12 s of 16 kHz audio); what the bounds drop is counted in
      :attr:`resume_stats` and cannot be re-sent. Without an index, a message counts as in a new
      handle's state once it was sent ``resume_margin_s`` before the handle arrived.

    Config mapping: ``instructions`` -> ``systemInstruction``; ``tools`` -> one
    ``functionDeclarations`` list with ``parametersJsonSchema``; ``tool_choice="none"`` declares
    no tools (Gemini Live has no tool_config, so ``"required"`` or a tool name act as
    ``"auto"``); ``voice`` -> ``prebuiltVoiceConfig.voiceName``; ``language`` ->
    ``speechConfig.languageCode``; ``temperature``, ``max_output_tokens`` -> generationConfig;
    ``turn_detection``: ``manual`` disables automatic activity detection (the client brackets
    each turn with ``activityStart`` / ``activityEnd``: the first audio opens a turn,
    ``request_response`` ends it), ``silence_ms`` / ``prefix_padding_ms`` map to the VAD, a
    ``threshold`` above / below 0.5 picks low / high start-of-speech sensitivity,
    ``semantic_vad`` is treated as ``server_vad``, ``interrupt_response=False`` ->
    ``NO_INTERRUPTION``; input/output transcription; ``sessionResumption`` always;
    ``contextWindowCompression`` with a sliding window by default.
    ``provider_options={"setup": {...}}`` is deep-merged into the ``setup`` message last
    (camelCase wire names; :func:`providers.translator.deep_merge`, as for OpenAI: ``None``
    deletes a key), e.g.
    ``{"setup": {"contextWindowCompression": None}}`` or
    ``{"setup": {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}}``. Audio: any
    session input format is converted to 16 kHz PCM16; the model's 24 kHz PCM16 is converted to
    the session output format.

    ``request_response(instruction)`` sends the instruction as ``realtimeInput.text`` rather
    than a ``clientContent`` turn: it stays ordered with the caller's audio on the realtime
    channel, while ``clientContent`` interrupts a reply, must not be interleaved with realtime
    input and is refused mid-session by 3.x models. Without an instruction it ends the caller's
    utterance (``audioStreamEnd``; ``activityEnd`` with manual turn detection).

    Connection switches (goAway, an unexpected 1000/1001/1006/1011 close with backoff, and
    ``update_config``) all take one path: the old socket is closed first (Gemini rejects a resume
    while it is open), a new ``setup`` carries the latest resumable handle, caller audio and
    tool results given meanwhile are held and delivered once after ``setupComplete``, and
    ``reconnecting`` / ``reconnected`` (strategy ``resumed``) are emitted. Without a usable
    handle (none yet, or the server refused it) a new session is seeded with the conversation
    so far as a ``clientContent`` turn list and the strategy is ``replayed``. Tool calls the new
    session does not know are reported as ``tool-call-cancelled``. Close codes 1007/1008 and
    auth failures are fatal: ``connect`` raises (``ConfigRejectedError`` /
    ``ProviderAuthError`` with the close code and reason) without retrying, and on a live
    session the client emits ``error`` (recoverable false) and ``closed``.

    What a resume re-sends: a handle restores the session as of the moment the server issued
    it, so caller audio (and any other message) the old socket took after that moment is not
    in the resumed state. The client keeps every message a socket took until a handle is known
    to include it (:mod:`providers.gemini.resume`) and re-sends the rest, in order, first thing
    on the resumed connection, before the held and the new traffic. With transparent
    resumption that is exactly the messages after ``lastConsumedClientMessageIndex`` (counted
    per connection: ``setup`` 0, then every ``realtimeInput``, ``clientContent`` and
    ``toolResponse``); without it, what was sent since ``resume_margin_s`` before the latest
    handle arrived, so a message in flight at the snapshot may reach the model twice (at least
    once). Results for tool calls the resumed session does not know are still dropped. This is
    the one deliberate exception to the transport's rule that a frame a socket took is never
    sent again; the transport itself re-sends nothing, so no frame goes out twice through both.
    A new (``replayed``) session re-sends nothing: the conversation seed stands in for it.
    """

    provider = "gemini"
    capabilities = RealtimeCapabilities(
        request_response=True,
        config_update="resumed",
        session_resumption=True,
        tool_call_cancellation=True,
        message_truncation=False,
        semantic_vad=False,
        voice_change_after_audio=True,
        native_input_sample_rate=INPUT_SAMPLE_RATE,
        native_output_sample_rate=OUTPUT_SAMPLE_RATE,
        input_encodings=("pcm16",),
        # a connection lasts about 10 minutes; the server announces its end with goAway
        max_connection_seconds=600,
    )

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        url: str | None = None,
        **options: Any,
    ) -> None:
        opts = merge_options("GeminiLiveClient", _OPTION_DEFAULTS, options)
        if opts["auth"] not in ("header", "query"):
            raise ConfigError(
                f"auth {opts['auth']!r} is invalid; expected 'header' (x-goog-api-key) or "
                "'query' (?key=)"
            )
        check_api_key(api_key, "GEMINI_API_KEY")
        if opts["bearer_token"] is not None and (
            not isinstance(opts["bearer_token"], str) or not opts["bearer_token"]
        ):
            raise ConfigError("bearer_token must be a non-empty string or None")
        headers = opts["headers"] or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError("headers must be a mapping of header names to string values")
        require_positive_ints(opts, "max_buffer_ms", "max_history", "resume_buffer_bytes")
        transparent = opts["transparent_resumption"]
        if transparent is not None and not isinstance(transparent, bool):
            raise ConfigError(
                f"option transparent_resumption={transparent!r} is invalid; expected True, False "
                "or None (on for Vertex AI)"
            )
        for name in ("go_away_margin_s", "resume_wait_s", "resume_buffer_s", "resume_margin_s"):
            value = opts[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"option {name}={value!r} is invalid; expected a number >= 0")
        transport = TransportOptions.from_options(
            opts, max_buffer_bytes=opts["max_buffer_ms"] * _WIRE_BYTES_PER_MS
        )
        super().__init__(model=model, transport=transport)
        self._api_key = api_key
        ephemeral = (api_key or os.environ.get("GEMINI_API_KEY", "")).startswith(_EPHEMERAL_PREFIX)
        self._base_url = url or (CONSTRAINED_URL if ephemeral else DEFAULT_URL)
        check_ws_url(self._base_url, f"BidiGenerateContent endpoint such as {DEFAULT_URL!r}")
        self._auth: Literal["header", "query"] = opts["auth"]
        self._bearer: str | None = opts["bearer_token"]
        self._extra_headers: dict[str, str] = dict(headers)
        self._go_away_margin_s = float(opts["go_away_margin_s"])
        self._resume_wait_s = float(opts["resume_wait_s"])
        if transparent is None:
            transparent = is_vertex_url(self._base_url)
        self._translator = GeminiTranslator(
            model=model, max_history=opts["max_history"], transparent=transparent
        )
        self._resume = ResumeBuffer(
            max_age_s=float(opts["resume_buffer_s"]),
            max_bytes=opts["resume_buffer_bytes"],
            margin_s=float(opts["resume_margin_s"]),
        )
        self._buffering = False  # the setup asked for handles: keep what a resume may lack
        self._resend: list[Resent] = []  # re-sent first on the resumed connection
        # caller frames: how many send_audio took, and (wire audio offset, frames) per push
        self._input_frames = 0
        self._pushes: deque[tuple[int, int]] = deque()
        self._frames_taken = 0  # caller frames whose audio every socket-taken message covers
        self._resume_overflowing = False
        self._connect_config: RealtimeSessionConfig | None = None
        self._resuming = False  # the connection being set up carries a resumption handle
        self._import_handle = False  # connect() resumes an imported handle
        self._go_away_timer: asyncio.TimerHandle | None = None
        self._go_away_due = False
        self._resumable: asyncio.Event = asyncio.Event()
        self._update_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"GeminiLiveClient(model={self.model!r}, url={self._base_url.split('?', 1)[0]!r})"

    @property
    def config(self) -> RealtimeSessionConfig | None:
        """The session config in effect (None before ``connect``)."""
        return None if self._connect_config is None else self._translator.config

    @property
    def resumption_handle(self) -> str | None:
        """The latest resumable session handle the server issued (None before the first)."""
        return self._translator.handle

    @property
    def resume_stats(self) -> ResumeStats:
        """Counters of the resumption buffer (a snapshot): what it holds, what resumes re-sent,
        and what its bounds dropped (messages a resume could no longer re-send)."""
        return self._resume.stats

    # ------------------------------------------------------------------ RealtimeAudioClient

    async def connect(self, config: RealtimeSessionConfig | dict[str, Any]) -> None:
        """Send ``setup`` and resolve on ``setupComplete``.

        Raises ``ConfigError`` (no credentials, bad config), ``ProviderAuthError`` (refused
        credentials), ``ConfigRejectedError`` (1007/1008: bad setup or unknown model, with the
        close code and reason) or ``ProviderConnectionError`` (network, a retryable close);
        nothing is retried here.
        """
        parsed = parse_config(config)
        self._credentials()
        self._translator.configure(parsed)
        self._connect_config = parsed
        await self._open_session()
        # after `connected`: calls of an imported session that the resumed one cannot answer
        self._apply(self._translator.lost_calls_cancelled())

    def send_audio(self, frame: bytes) -> None:
        """Queue one frame in the session's input format; returns at once.

        Raises ``AudioFormatError`` (non-bytes, odd PCM16 byte count; nothing is queued) or
        ``NotConnectedError`` (before ``connect`` or after the session ended). During a
        connection switch the audio is held and delivered after the new ``setupComplete``.
        """
        self._require_open("send_audio")
        translator = self._translator
        pcm = translator.input_audio(frame)
        self._input_frames += 1
        if pcm:
            for marker in translator.activity_start_frames():
                self._send(marker)
            self._push_audio(pcm)
            # this frame is complete on the wire once the audio up to here went out
            self._pushes.append((self._stats.pushed_bytes, self._input_frames))

    def send_tool_response(self, responses: list[RealtimeToolResponse]) -> None:
        """Send ``toolResponse.functionResponses`` (``name`` filled from the pending call).

        A result for a call the model cancelled is dropped and logged. During a connection
        switch the results are held and delivered after ``setupComplete`` (or dropped, logged,
        when the new session does not know the call; it was reported ``tool-call-cancelled``).
        Raises ``UsageError`` for an unknown call id without a name.
        """
        self._require_open("send_tool_response")
        parsed = parse_tool_responses(responses)
        for frame in self._translator.tool_response_frames(parsed):
            self._send(frame)
        self._state_changed()  # the answered calls leave the export's pending list

    def _request_response(self, instruction: str | None) -> None:
        """Prompt a model turn (see the class docstring for the wire form and why)."""
        self._require_open("request_response")
        check_instruction(instruction)
        for frame in self._translator.request_response_frames(instruction):
            self._send(frame)

    async def update_config(self, config: RealtimeSessionConfigUpdate | dict[str, Any]) -> None:
        """Apply a partial config by resuming on a new connection with a new ``setup``.

        Fields the update does not name keep their values. Waits up to ``resume_wait_s`` for a
        resumable point (the model done speaking, no tool call pending), switches connections
        as for a goAway, and emits ``config-updated`` with the strategy used (``resumed``, or
        ``replayed`` when no handle could be used). Raises ``ConfigError`` for an invalid update
        and the provider error when the new setup is refused (the session then ends).
        """
        update = parse_update(config)
        async with self._update_lock:
            await self._wait_live(self._resume_wait_s + 10.0)
            merged = self._translator.config.merged(update)
            self._translator.configure(merged)
            self._connect_config = merged
            await self._wait_resumable(self._resume_wait_s)
            await self._reconnect("config update")
            strategy = self._reconnect_strategy()
        self.emit("config-updated", ConfigUpdatedEvent(strategy=strategy))

    # ------------------------------------------------------------------ takeover state

    def export_state(self) -> dict[str, Any]:
        """``{"handle": <latest resumable handle>, "input_frames": <n>}``: enough for another
        process to resume.

        ``input_frames`` is how many of the frames this client's ``send_audio`` took the
        handle's state includes (exactly with transparent resumption, at least that many
        without): whoever resumes the session elsewhere re-sends the caller audio after them
        (the distributed runtime maps it to an input stream entry). Tool calls pending but
        issued after the handle (the resumed session will not know them) are listed too, as
        ``"lost_calls": [<call id>, ...]``.
        """
        handle = self._translator.handle
        if not handle:
            return {}
        state: dict[str, Any] = {"handle": handle}
        lost = self._translator.calls_after_handle
        if lost:
            state["lost_calls"] = lost
        state["input_frames"] = self._resume.inputs
        return state

    @property
    def state_version(self) -> int:
        """Also changes with every new resumption handle (which comes without an event)."""
        return super().state_version + self._translator.handle_changes

    def import_state(self, state: dict[str, Any]) -> Literal["resumed", "replayed"] | None:
        """Resume an exported session on ``connect`` when ``state`` carries a handle.

        The exported ``lost_calls`` are reported as ``tool-call-cancelled`` once ``connect``
        resolved, and a late result for one of them is dropped and logged, not sent. The caller
        audio the handle's state lacks (after the exported ``input_frames``) is the importer's to
        send again: this client never saw it. Its own ``input_frames`` count from 0.
        """
        handle = state.get("handle") if isinstance(state, dict) else None
        if not isinstance(handle, str) or not handle:
            return None
        lost = state.get("lost_calls")
        lost_calls = [c for c in lost if isinstance(c, str)] if isinstance(lost, list) else []
        self._translator.restore_handle(handle, lost_calls=lost_calls)
        self._import_handle = True
        return "resumed"

    # ------------------------------------------------------------------ transport hooks

    def _endpoint(self) -> Endpoint:
        credential, kind = self._credentials()
        parts = urllib.parse.urlsplit(self._base_url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        headers = dict(self._extra_headers)
        if kind == "api_key" and credential is not None:
            ephemeral = credential.startswith(_EPHEMERAL_PREFIX)
            if self._auth == "query":
                query.append(("access_token" if ephemeral else "key", credential))
            elif ephemeral:
                headers["Authorization"] = f"Token {credential}"
            else:
                headers["x-goog-api-key"] = credential
        elif kind == "bearer" and credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        return Endpoint(url=url, headers=headers, display_url=self._base_url.split("?", 1)[0])

    def _handshake_frames(self, *, reconnect: bool) -> list[Frame]:
        frame = self._translator.setup_frame(resume=reconnect or self._import_handle)
        # provider_options may remove sessionResumption: what counts is what the setup carries
        resumption = frame["setup"].get("sessionResumption")
        self._resuming = isinstance(resumption, dict) and bool(resumption.get("handle"))
        # the setup is this connection's message 0; without handles nothing needs keeping
        self._buffering = isinstance(resumption, dict)
        self._resume.connection_opened()
        if not self._buffering:
            self._resume.clear()
        return [frame]

    def _handle_message(self, message: Frame) -> None:
        self._apply(self._translator.receive_message(message))
        if self._translator.at_resumable_point:
            self._resumable.set()
            if self._go_away_due:
                self._switch("goAway")
        else:
            self._resumable.clear()

    def _audio_message(self, chunk: bytes) -> Frame:
        return self._translator.audio_frame(chunk)

    def _classify_close(self, code: int | None, reason: str) -> ProviderError:
        if code in (1007, 1008):
            text = f"Gemini closed the connection (code {code}, reason {reason!r})"
            if any(word in reason.lower() for word in _AUTH_WORDS):
                return ProviderAuthError(text + "; check the API key or token", code=str(code))
            if self._in_handshake and self._resuming:
                # The new setup carried a handle the server would not take (expired, or from
                # another model): forget it; the next attempt starts a seeded new session.
                log.warning("Gemini refused the resumption handle (%s); replaying instead", text)
                self._translator.drop_handle()
                return ProviderConnectionError(text, code=str(code), recoverable=True)
            return ConfigRejectedError(text, code=str(code))
        return super()._classify_close(code, reason)

    def _reset_connection_state(self) -> None:
        self._cancel_go_away()
        self._resumable.clear()
        self._apply(self._translator.connection_lost())

    def _filter_held(self, frames: list[Frame]) -> list[Frame]:
        if self._resuming:
            resent: list[Frame] = list(self._resume.resend(self._translator.audio_frame))
        else:
            # a new session: the seed stands in for what old sockets took, re-sent or not
            resent = []
            self._resume.restart(self._frames_taken)
            frames = [frame for frame in frames if not isinstance(frame, Resent)]
        kept_resent, kept, outputs = self._translator.filter_resumed(resent, frames)
        self._apply(outputs)
        inputs = self._resume.inputs
        self._resend = []
        for frame in kept_resent:
            if not isinstance(frame, Resent):  # rebuilt without a dropped function response
                frame = Resent(frame, audio=None, inputs=inputs)
            inputs = frame.inputs
            self._resend.append(frame)
        return kept

    def _after_handshake(self, *, reconnect: bool) -> None:
        self._import_handle = False
        if reconnect:
            resend, self._resend = self._resend, []
            if resend:
                log.info("re-sending %d message(s) the resumed Gemini session lacks", len(resend))
            self._send_first([*self._translator.restart_frames(), *resend])

    def _reconnect_strategy(self) -> Strategy:
        return "resumed" if self._resuming else "replayed"

    def _is_idle(self) -> bool:
        return self._translator.at_resumable_point

    def _on_closed(self) -> None:
        self._cancel_go_away()
        self._resumable.set()  # release update_config waiters; they see the closed state

    # ------------------------------------------------------------------ internals

    def _on_signal(self, signal: Signal) -> None:
        if isinstance(signal, SetupComplete):
            if self._in_handshake and self.state is SessionState.RECONNECTING:
                self._apply(self._translator.session_restored(resumed=self._resuming))
            self._handshake_done()
        elif isinstance(signal, GoAway):
            self._on_go_away(signal.time_left_s)
        elif isinstance(signal, ResumptionPoint):
            self._resume.handle_issued(signal.consumed_index, time.monotonic())
            if self._resume_overflowing and not self._resume.stats.buffered_messages:
                self._resume_overflowing = False
        else:
            super()._on_signal(signal)

    def _frame_taken(self, frame: Frame, audio: bytes | None, size: int) -> None:
        """Buffer what a socket took until a handle includes it (see the class docstring)."""
        if audio is not None:
            # the caller frames this message completes: their audio ends at or before it
            offset = self._audio_done_bytes
            pushes = self._pushes
            while pushes and pushes[0][0] <= offset:
                self._frames_taken = pushes.popleft()[1]
        if not self._buffering:
            return
        dropped = self._resume.taken(
            frame=frame, audio=audio, size=size, inputs=self._frames_taken, now=time.monotonic()
        )
        if dropped and not self._resume_overflowing:
            self._resume_overflowing = True
            log.info(
                "Gemini resumption buffer full (%g s / %d bytes): dropping its oldest messages; "
                "a resume before the next handle cannot re-send them",
                self._resume.max_age_s,
                self._resume.max_bytes,
            )

    def _on_go_away(self, time_left_s: float) -> None:
        """Plan the switch: now if resumable, else at the first resumable point or the deadline.

        The deadline is a loop timer, so it fires even when no further message arrives.
        """
        if self.state is not SessionState.LIVE:
            return
        log.info("Gemini goAway: the connection ends in %.3g s; switching", time_left_s)
        self._go_away_due = True
        if self._translator.at_resumable_point:
            self._switch("goAway")
            return
        if self._go_away_timer is None:
            delay = max(0.0, time_left_s - min(self._go_away_margin_s, time_left_s / 2))
            loop = asyncio.get_running_loop()
            self._go_away_timer = loop.call_later(delay, self._switch, "goAway deadline")

    def _switch(self, reason: str) -> None:
        self._cancel_go_away()
        self._start_reconnect(reason)

    def _cancel_go_away(self) -> None:
        self._go_away_due = False
        if self._go_away_timer is not None:
            self._go_away_timer.cancel()
            self._go_away_timer = None

    async def _wait_resumable(self, limit_s: float) -> None:
        if self._translator.at_resumable_point:
            return
        try:
            await asyncio.wait_for(self._resumable.wait(), limit_s)
        except TimeoutError:
            log.info("no resumable point within %.3g s; switching connections anyway", limit_s)

    def _credentials(self) -> tuple[str | None, Literal["api_key", "bearer", "headers", "none"]]:
        if self._bearer:
            return self._bearer, "bearer"
        key = self._api_key or os.environ.get("GEMINI_API_KEY")
        if key:
            return key, "api_key"
        if any(name.lower() in ("authorization", "x-goog-api-key") for name in self._extra_headers):
            return None, "headers"
        host = urllib.parse.urlsplit(self._base_url).hostname or ""
        if host in _LOOPBACK_HOSTS or host.startswith("127."):
            return None, "none"
        raise ConfigError(
            "no Gemini credentials: pass api_key=... or set GEMINI_API_KEY, or give "
            "bearer_token=... (Vertex AI); only a loopback simulator URL works without one"
        )

    def _require_open(self, what: str) -> None:
        if self._connect_config is None or self.state in _ENDED:
            raise NotConnectedError(
                f"{what} needs a connected session; the session is {self.state.value}"
            )


_ENDED = frozenset({SessionState.IDLE, SessionState.CLOSING, SessionState.CLOSED})
