"""What a resumed Gemini session lacks, kept so :class:`GeminiLiveClient` can re-send it.

A Gemini resumption handle restores the session state as of the moment the server issued it.
Messages the client sent after that moment (caller audio in flight, the rest of an utterance)
are not in that state: a client that resumes after a ``goAway``, a dropped connection or a
config change must send them again, or the model never hears them.

:class:`ResumeBuffer` keeps every client message a socket *took* (see the exactly-once rule in
:mod:`providers.transport`) until a resumable handle is known to include it, and hands the rest
back, in order, when the next connection resumes. Which messages a handle includes:

- **Transparent resumption** (``sessionResumption.transparent``, Vertex AI): the update carries
  ``lastConsumedClientMessageIndex``, the index of the last included message *on the
  connection that issued it*. The server counts every client message of a connection:
  ``setup`` is 0, the first ``realtimeInput`` / ``clientContent`` / ``toolResponse`` after it
  1, and so on, restarting at 0 with the next connection's ``setup`` (Google's Live API
  session-manager guidance; re-sent messages get new indices). Messages up to the index are
  dropped from the buffer: exactly once.
- **No index** (the Gemini Developer API, which refuses ``transparent``, or a model that omits
  it): the server says nothing about messages in flight when it took its snapshot. Messages the
  socket took at least ``margin_s`` before the update arrived are taken as included; those
  taken later are kept and re-sent. At least once: a message in that margin the snapshot did
  include reaches the model twice; one in flight for longer than the margin would be lost.

The buffer is bounded: a message older than ``max_age_s`` (since its socket took it), or the
oldest when the buffer holds more than ``max_bytes``, is dropped and counted
(:class:`ResumeStats`); a resume then cannot re-send it. Each message also carries the number of
caller frames (``send_audio`` calls) that are complete once it is in the state, so the state
behind the latest handle maps to a caller position (:attr:`ResumeBuffer.inputs`), which the
distributed runtime translates into an input stream entry.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Resent", "ResumeBuffer", "ResumeStats"]

#: Re-sent caller audio is merged into messages of at most this many bytes of PCM.
MAX_RESENT_AUDIO_BYTES = 96_000


class Resent(dict[str, Any]):
    """A buffered message queued again for a resumed connection.

    A plain wire frame to the transport; it remembers the raw audio it carries (None for a
    control message) and its caller position, so it is buffered the same way when a socket
    takes it again.
    """

    __slots__ = ("audio", "inputs")

    def __init__(self, frame: dict[str, Any], *, audio: bytes | None, inputs: int) -> None:
        super().__init__(frame)
        self.audio = audio
        self.inputs = inputs


@dataclass(frozen=True, slots=True)
class ResumeStats:
    """Counters of a client's resumption buffer (messages and wire-size estimates in bytes)."""

    buffered_messages: int = 0
    buffered_bytes: int = 0
    resent_messages: int = 0
    dropped_messages: int = 0
    dropped_bytes: int = 0


@dataclass(slots=True)
class _Sent:
    """One message a socket took: its index on that connection and what to re-send."""

    index: int
    at: float
    inputs: int
    size: int
    frame: dict[str, Any] | None  # a control message
    audio: bytes | None  # or the 16 kHz PCM16 of an audio message


class ResumeBuffer:
    """Messages the latest resumable handle may not include (see the module docstring)."""

    def __init__(self, *, max_age_s: float, max_bytes: int, margin_s: float) -> None:
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.margin_s = margin_s
        #: caller frames (``send_audio`` calls) the latest resumable handle's state includes
        self.inputs = 0
        self.resent_messages = 0
        self.dropped_messages = 0
        self.dropped_bytes = 0
        self._sent: deque[_Sent] = deque()  # taken on the current connection
        self._pending: list[_Sent] = []  # taken on an earlier one, to re-send on a resume
        self._bytes = 0
        self._index = 0

    @property
    def stats(self) -> ResumeStats:
        return ResumeStats(
            buffered_messages=len(self._sent) + len(self._pending),
            buffered_bytes=self._bytes,
            resent_messages=self.resent_messages,
            dropped_messages=self.dropped_messages,
            dropped_bytes=self.dropped_bytes,
        )

    def connection_opened(self) -> None:
        """A new connection sends its ``setup`` (index 0): what earlier sockets took can only
        be re-sent now; no update of the new connection can say it was consumed."""
        self._pending.extend(self._sent)
        self._sent.clear()
        self._index = 0

    def taken(
        self,
        *,
        frame: dict[str, Any],
        audio: bytes | None,
        size: int,
        inputs: int,
        now: float,
    ) -> int:
        """A socket took one message (its next index); returns how many the bound dropped.

        ``inputs``: the caller frames complete once it is in the state; a :class:`Resent`
        message brings its own (and its raw audio).
        """
        if isinstance(frame, Resent):
            audio, inputs = frame.audio, frame.inputs
            self.resent_messages += 1
        self._index += 1
        self._sent.append(
            _Sent(self._index, now, inputs, size, None if audio is not None else frame, audio)
        )
        self._bytes += size
        return self._trim(now)

    def handle_issued(self, consumed_index: int | None, now: float) -> None:
        """A resumable handle arrived at ``now``; forget the messages its state includes."""
        horizon = now - self.margin_s
        sent = self._sent
        last: _Sent | None = None
        while sent and (
            sent[0].index <= consumed_index if consumed_index is not None else sent[0].at <= horizon
        ):
            last = sent.popleft()
            self._bytes -= last.size
        if last is not None:
            self.inputs = max(self.inputs, last.inputs)

    def resend(self, audio_frame: Any) -> list[Resent]:
        """What a resumed connection sends first, in order; buffered again once taken.

        ``audio_frame(pcm)`` builds the wire message for caller audio; consecutive audio
        messages are merged (up to :data:`MAX_RESENT_AUDIO_BYTES`), which changes nothing the
        model hears.
        """
        out: list[Resent] = []
        run: list[_Sent] = []

        def flush() -> None:
            if run:
                pcm = b"".join(item.audio or b"" for item in run)
                out.append(Resent(audio_frame(pcm), audio=pcm, inputs=run[-1].inputs))
                run.clear()

        size = 0
        for item in self._pending:
            if item.audio is None:
                flush()
                assert item.frame is not None
                out.append(Resent(item.frame, audio=None, inputs=item.inputs))
                continue
            if run and size + len(item.audio) > MAX_RESENT_AUDIO_BYTES:
                flush()
            if not run:
                size = 0
            run.append(item)
            size += len(item.audio)
        flush()
        self._bytes -= sum(item.size for item in self._pending)
        self._pending = []
        return out

    def restart(self, inputs: int) -> None:
        """A new session (no handle could be used): it is seeded, nothing is re-sent, and its
        state starts after the first ``inputs`` caller frames."""
        self._bytes -= sum(item.size for item in self._pending)
        self._pending = []
        self.inputs = max(self.inputs, inputs)

    def clear(self) -> None:
        """Keep nothing (the server issues no handles)."""
        self._sent.clear()
        self._pending = []
        self._bytes = 0

    def _trim(self, now: float) -> int:
        horizon = now - self.max_age_s
        dropped = 0
        while (self._pending or self._sent) and (
            self._bytes > self.max_bytes or self._oldest_at() < horizon
        ):
            item = self._pending.pop(0) if self._pending else self._sent.popleft()
            self._bytes -= item.size
            self.dropped_bytes += item.size
            dropped += 1
        self.dropped_messages += dropped
        return dropped

    def _oldest_at(self) -> float:
        if self._pending:
            return self._pending[0].at
        return self._sent[0].at if self._sent else float("inf")
