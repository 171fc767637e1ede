"""The OpenAI response lifecycle as transition tables, the tool calls, and barge-in. No I/O.

Three lifecycles, each a table ``(state, event) -> new state`` walked with
:func:`providers.translator.transition` (a pair the table does not list is a bug here and
raises :class:`~providers.translator.IllegalTransition`):

:data:`REPLY_TRANSITIONS`, the session's one reply slot (the GA server runs one response at a
time in the conversation)::

    idle --request--> requested --created--> active --done--> idle
    idle ----------------created-----------> active            (the automatic response of a turn)
    requested --deferred | rejected--> idle                    (lost the race | refused)
    any --lost--> idle                                         (the connection is gone)

:data:`RESPONSE_TRANSITIONS`, each response: ``open --finish--> done --cover--> covered``; a
``done`` response whose tool calls all have a result owes the model one follow-up
``response.create`` until a response that sees the outputs covers it (``covered --uncover-->
done`` when the ``response.create`` that covered it must be asked again).

:data:`CALL_TRANSITIONS`, each tool call: ``streaming --arguments--> emitted --answer-->
answered``; ``streaming`` or ``emitted`` ``--cancel--> cancelled`` (its response was
cancelled, or ended before the arguments were complete).

Rules the tables serve:

- Tool outputs are sent at once; exactly one ``response.create`` follows, after the response
  that asked is done, when no other response is active or requested, and not while the caller's
  turn is open under server VAD (the automatic response then sees the outputs). A response that
  the server created after the outputs were added covers them; no extra ``response.create``.
- Barge-in (``speech_started`` while a reply is active or still playing): ``interrupted`` and a
  ``conversation.item.truncate`` whose integer ``audio_end_ms`` is the played time clamped to the
  audio actually received (bytes/48 for PCM16 24 kHz, bytes/8 for G.711); no truncate before the
  first audio frame. The played time is the caller's own report when it sent one for that
  response (``report_playback``, e.g. a phone's confirmed Twilio marks), advanced by the time
  since the report arrived; otherwise the wall clock since the item's first audio.
  With ``interrupt_response=False`` the client cancels the response itself (``response.cancel``
  before the truncate). Trailing deltas of an interrupted response are dropped.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.audio import AudioConverter
from protocol.config import AudioFormat
from protocol.events import InterruptedEvent
from providers.translator import Action, Emit, Frame, Send, transition

from .session import bytes_per_ms, wire_format

__all__ = [
    "CALL_TRANSITIONS",
    "REPLY_TRANSITIONS",
    "RESPONSE_TRANSITIONS",
    "AudioItem",
    "Call",
    "CallEvent",
    "CallState",
    "Phase",
    "PhaseEvent",
    "Playback",
    "Reply",
    "ReplyEvent",
    "Request",
    "Response",
    "ResponseLifecycle",
]

#: Finished and covered responses kept for late events (older ones are forgotten).
_KEEP_FINISHED = 8


# ---------------------------------------------------------------------------- tables


class Reply(enum.Enum):
    """The session's reply slot."""

    IDLE = "idle"  # no response in progress, none asked for
    REQUESTED = "requested"  # our response.create is on its way; the server has not answered
    ACTIVE = "active"  # a response is in progress (ours, or the automatic one of a turn)


class ReplyEvent(enum.Enum):
    REQUEST = "request"  # we sent response.create
    CREATED = "created"  # response.created
    DONE = "done"  # response.done of the active response
    DEFERRED = "deferred"  # our response.create lost the race to another response: ask again
    REJECTED = "rejected"  # the server refused our response.create for good
    LOST = "lost"  # the connection is gone


REPLY_TRANSITIONS: dict[tuple[Reply, ReplyEvent], Reply] = {
    (Reply.IDLE, ReplyEvent.REQUEST): Reply.REQUESTED,
    (Reply.IDLE, ReplyEvent.CREATED): Reply.ACTIVE,
    (Reply.REQUESTED, ReplyEvent.CREATED): Reply.ACTIVE,
    # The server never runs two responses in the conversation at once; if it says it does,
    # the newer one is the one in progress.
    (Reply.ACTIVE, ReplyEvent.CREATED): Reply.ACTIVE,
    (Reply.ACTIVE, ReplyEvent.DONE): Reply.IDLE,
    (Reply.REQUESTED, ReplyEvent.DEFERRED): Reply.IDLE,
    (Reply.REQUESTED, ReplyEvent.REJECTED): Reply.IDLE,
    (Reply.IDLE, ReplyEvent.LOST): Reply.IDLE,
    (Reply.REQUESTED, ReplyEvent.LOST): Reply.IDLE,
    (Reply.ACTIVE, ReplyEvent.LOST): Reply.IDLE,
}


class Phase(enum.Enum):
    """Where one response is."""

    OPEN = "open"  # created, not done
    DONE = "done"  # done; its tool outputs, if any, still need a response that sees them
    COVERED = "covered"  # done; nothing owed for it


class PhaseEvent(enum.Enum):
    FINISH = "finish"  # response.done, or the connection was lost under it
    COVER = "cover"  # a later response sees its outputs, or it needs none
    UNCOVER = "uncover"  # the response.create that covered it must be asked again


RESPONSE_TRANSITIONS: dict[tuple[Phase, PhaseEvent], Phase] = {
    (Phase.OPEN, PhaseEvent.FINISH): Phase.DONE,
    (Phase.DONE, PhaseEvent.FINISH): Phase.DONE,
    (Phase.COVERED, PhaseEvent.FINISH): Phase.COVERED,
    (Phase.DONE, PhaseEvent.COVER): Phase.COVERED,
    (Phase.COVERED, PhaseEvent.COVER): Phase.COVERED,
    (Phase.COVERED, PhaseEvent.UNCOVER): Phase.DONE,
}


class CallState(enum.Enum):
    """Where one tool call is."""

    STREAMING = "streaming"  # its arguments are still arriving
    EMITTED = "emitted"  # tool-call was emitted; its result is awaited
    ANSWERED = "answered"  # its result was sent
    CANCELLED = "cancelled"  # a result is no longer wanted (dropped and logged if it comes)


class CallEvent(enum.Enum):
    ARGUMENTS = "arguments"  # the arguments are complete (emitted to the caller)
    ANSWER = "answer"  # the result was sent
    CANCEL = "cancel"  # its response was cancelled or ended first


CALL_TRANSITIONS: dict[tuple[CallState, CallEvent], CallState] = {
    (CallState.STREAMING, CallEvent.ARGUMENTS): CallState.EMITTED,
    (CallState.STREAMING, CallEvent.ANSWER): CallState.ANSWERED,
    (CallState.EMITTED, CallEvent.ANSWER): CallState.ANSWERED,
    (CallState.STREAMING, CallEvent.CANCEL): CallState.CANCELLED,
    (CallState.EMITTED, CallEvent.CANCEL): CallState.CANCELLED,
}


# ---------------------------------------------------------------------------- records


@dataclass
class Response:
    id: str
    calls: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)  # its assistant message items
    phase: Phase = Phase.OPEN

    def to(self, event: PhaseEvent) -> None:
        self.phase = transition(RESPONSE_TRANSITIONS, self.phase, event, f"response {self.id}")


@dataclass
class Call:
    call_id: str
    name: str
    response_id: str | None
    state: CallState = CallState.STREAMING
    arguments: str = ""
    acked: bool = False  # the server added its function_call_output item

    def to(self, event: CallEvent) -> None:
        self.state = transition(CALL_TRANSITIONS, self.state, event, f"tool call {self.call_id}")


@dataclass
class Request:
    """Our ``response.create`` in flight: what it was for, so it can be asked again."""

    event_id: str
    instruction: str | None
    explicit: bool  # the caller asked (request_response), not a tool follow-up
    covers: list[str]  # the responses whose follow-up it is


@dataclass
class AudioItem:
    """The assistant audio item being played (the latest that produced audio)."""

    item_id: str
    response_id: str | None
    content_index: int
    first_at: float
    wire_bytes: int = 0
    truncated: bool = False


class Playback:
    """The model audio of the current connection: its wire format and conversion, the item
    being played, and whether the model produced audio at all."""

    def __init__(self, output: AudioFormat) -> None:
        self.wire = wire_format(output)
        self.converter = AudioConverter(self.wire, output)
        self.item: AudioItem | None = None
        self.seen = False
        # the caller's last playback report: (response id, played ms, when it arrived)
        self.reported: tuple[str | None, float, float] | None = None

    def report(self, response_id: str | None, played_ms: int, now: float) -> None:
        """The caller has played ``played_ms`` of ``response_id`` at ``now`` (monotonic s)."""
        self.reported = (response_id, float(played_ms), now)

    def played_ms(self, item: AudioItem, now: float) -> float:
        """How much of ``item`` the caller has heard at ``now``: its own report for the item's
        response advanced by the time since (playback runs in real time), else the wall clock
        since the item's first audio; never negative."""
        reported = self.reported
        if reported is not None and item.response_id is not None:
            response_id, played_ms, at = reported
            if response_id == item.response_id:
                return max(0.0, played_ms + (now - at) * 1000.0)
        return max(0.0, (now - item.first_at) * 1000.0)

    def rebuild(self, output: AudioFormat) -> None:
        """The session output format ``output`` is in effect on the wire."""
        self.wire = wire_format(output)
        self.converter = AudioConverter(self.wire, output)

    def restart(self, output: AudioFormat) -> None:
        """Drop the samples the converter holds (they belong to a reply that was cut)."""
        self.converter = AudioConverter(self.wire, output)

    def received_ms(self, item: AudioItem) -> float:
        return item.wire_bytes / bytes_per_ms(self.wire)


# ---------------------------------------------------------------------------- lifecycle


class ResponseLifecycle:
    """The reply slot, the responses and tool calls of one session, and what is owed.

    ``active`` is set exactly while :attr:`reply` is ``active``, ``request`` exactly while it is
    ``requested``. ``queued`` holds the caller's requests not yet sent (their instructions);
    ``caller_turn_open`` is true from the caller's ``speech_started`` under server VAD until a
    response takes the turn; ``live`` while a connection has finished its handshake.
    """

    def __init__(self, next_id: Callable[[], str]) -> None:
        self._next_id = next_id
        self.reply = Reply.IDLE
        self.active: str | None = None
        self.request: Request | None = None
        self.queued: deque[str | None] = deque()
        self.caller_turn_open = False
        self.live = False
        self.responses: dict[str, Response] = {}
        self.calls: dict[str, Call] = {}
        self.interrupted: set[str] = set()

    def _reply_to(self, event: ReplyEvent) -> None:
        self.reply = transition(REPLY_TRANSITIONS, self.reply, event, "reply slot")

    def response(self, response_id: str) -> Response:
        """The record of ``response_id`` (created open when unknown)."""
        response = self.responses.get(response_id)
        if response is None:
            response = self.responses[response_id] = Response(response_id)
        return response

    def was_interrupted(self, response_id: str | None) -> bool:
        return response_id is not None and response_id in self.interrupted

    # ------------------------------------------------------------------ server events

    def created(self, response_id: str) -> None:
        """``response.created``: it is the one in progress."""
        was = self.reply
        self._reply_to(ReplyEvent.CREATED)
        self.active = response_id
        self.response(response_id)
        if was is Reply.REQUESTED:
            self.request = None  # the server answers requests in order: this one is ours
        else:
            self.caller_turn_open = False  # the automatic response of the caller's turn
        # A response created after the tool outputs were added sees them: no follow-up owed.
        for response in self.responses.values():
            if (
                response.phase is Phase.DONE
                and response.calls
                and all(
                    self.calls[c].state is CallState.CANCELLED
                    or (self.calls[c].state is CallState.ANSWERED and self.calls[c].acked)
                    for c in response.calls
                )
            ):
                response.to(PhaseEvent.COVER)
        self._prune()

    def finished(self, response_id: str, *, cancelled: bool) -> tuple[Response, list[str]]:
        """``response.done``: the response and the ids of its emitted calls that a cancel left
        without a result (to report as ``tool-call-cancelled``)."""
        response = self.response(response_id)
        response.to(PhaseEvent.FINISH)
        if self.active == response_id:
            self._reply_to(ReplyEvent.DONE)
            self.active = None
        pending: list[str] = []
        for call_id in response.calls:
            call = self.calls[call_id]
            if cancelled and call.state is CallState.EMITTED:
                pending.append(call_id)
                call.to(CallEvent.CANCEL)
            elif call.state is CallState.STREAMING:
                call.to(CallEvent.CANCEL)
        if cancelled or not response.calls:
            # After a cancel the caller's new turn gets its own response: nothing owed.
            response.to(PhaseEvent.COVER)
        return response, pending

    def connection_lost(self) -> tuple[str | None, Response | None]:
        """The connection is gone: the id and record of the response it cut (finished), if any.

        A ``response.create`` not yet answered is owed again; tool calls already announced stay
        pending (the replay re-creates them).
        """
        self.live = False
        cut_id, cut = self.active, None
        if cut_id is not None:
            cut = self.responses.get(cut_id)
            if cut is not None:
                cut.to(PhaseEvent.FINISH)
                for call_id in cut.calls:
                    call = self.calls[call_id]
                    if call.state is CallState.STREAMING:
                        call.to(CallEvent.CANCEL)
            self.active = None
        self._drop_request(requeue=True)
        self._reply_to(ReplyEvent.LOST)
        self.caller_turn_open = False
        self.interrupted.clear()
        return cut_id, cut

    # ------------------------------------------------------------------ requests

    def ask(self, instruction: str | None) -> list[Action]:
        """The caller wants a response: queued, sent when the slot is free."""
        self.queued.append(instruction)
        return self.maybe_respond()

    def maybe_respond(self) -> list[Action]:
        """``response.create`` for the first queued request or the tool follow-ups due, when
        the connection is live, the slot idle and the caller not mid-turn."""
        if not self.live or self.reply is not Reply.IDLE or self.caller_turn_open:
            return []
        due = self.due_followups()
        if self.queued:
            instruction = self.queued.popleft()
            explicit = True
        elif due:
            instruction = None
            explicit = False
        else:
            return []
        for response in due:
            response.to(PhaseEvent.COVER)
        event_id = self._next_id()
        self._reply_to(ReplyEvent.REQUEST)
        self.request = Request(event_id, instruction, explicit, [r.id for r in due])
        frame: Frame = {"type": "response.create", "event_id": event_id}
        if instruction is not None:
            frame["response"] = {"instructions": instruction}
        return [Send(frame)]

    def request_deferred(self) -> None:
        """Our ``response.create`` lost the race to another response: it is owed again."""
        self._drop_request(requeue=True)
        self._reply_to(ReplyEvent.DEFERRED)

    def request_rejected(self) -> None:
        """The server refused our ``response.create``: it is given up."""
        self._drop_request(requeue=False)
        self._reply_to(ReplyEvent.REJECTED)

    def _drop_request(self, *, requeue: bool) -> None:
        request, self.request = self.request, None
        if request is None or not requeue:
            return
        if request.explicit:
            self.queued.appendleft(request.instruction)
        for response_id in request.covers:
            response = self.responses.get(response_id)
            if response is not None:
                response.to(PhaseEvent.UNCOVER)

    def due_followups(self) -> list[Response]:
        """Done responses whose tool calls all have a result and that no response saw yet."""
        return [
            r
            for r in self.responses.values()
            if r.phase is Phase.DONE
            and r.calls
            and all(
                self.calls[c].state in (CallState.ANSWERED, CallState.CANCELLED) for c in r.calls
            )
        ]

    def is_idle(self) -> bool:
        """Between turns: no response active, requested or owed, caller not mid-turn."""
        return (
            self.reply is Reply.IDLE
            and not self.queued
            and not self.caller_turn_open
            and not self.due_followups()
            and not any(c.state is CallState.EMITTED for c in self.calls.values())
        )

    def _prune(self) -> None:
        finished = [
            rid
            for rid, r in self.responses.items()
            if r.phase is Phase.COVERED and rid != self.active
        ]
        for rid in finished[:-_KEEP_FINISHED]:
            del self.responses[rid]

    # ------------------------------------------------------------------ tool calls

    def register_call(self, call_id: str, name: str, response_id: str | None) -> tuple[Call, bool]:
        """The call ``call_id`` (and whether it is new); a known call only gets its name."""
        call = self.calls.get(call_id)
        if call is not None:
            if name and not call.name:
                call.name = name
            return call, False
        call = self.calls[call_id] = Call(call_id, name, response_id)
        if response_id is not None:
            self.response(response_id).calls.append(call_id)
        return call, True

    def answered(self, call_id: str, name: str | None) -> Call:
        """The result of ``call_id`` was sent. A call this session never announced (e.g. one
        restored elsewhere) owes the model one follow-up as if its response were done."""
        call = self.calls.get(call_id)
        if call is None:
            call = self.calls[call_id] = Call(call_id, name or "", None)
            orphan = self.response(f"external:{call_id}")
            orphan.calls.append(call_id)
            orphan.to(PhaseEvent.FINISH)
        call.to(CallEvent.ANSWER)
        return call

    # ------------------------------------------------------------------ barge-in

    def barge_in(
        self, now: float, playback: Playback, output: AudioFormat, *, cancel: bool
    ) -> list[Action]:
        """The caller started speaking at ``now``: interrupt the reply in progress or still
        playing (``cancel``: with a ``response.cancel``) and truncate what was not played."""
        item = playback.item
        active = self.active
        playing = False
        if item is not None and not item.truncated:
            received_ms = playback.received_ms(item)
            playing = item.response_id == active or playback.played_ms(item, now) < received_ms
        if active is None and not playing:
            return []
        response_id = active if active is not None else item.response_id if item else None
        actions: list[Action] = [Emit("interrupted", InterruptedEvent(response_id=response_id))]
        if response_id is not None:
            self.interrupted.add(response_id)
        if active is not None and cancel:
            # Cancel first: the truncate then refers to a finished item, whether or not the
            # server would have ended the response on its own because of the truncate.
            actions.append(
                Send(
                    {"type": "response.cancel", "event_id": self._next_id(), "response_id": active}
                )
            )
        if item is not None and playing and item.wire_bytes > 0:
            received_ms = playback.received_ms(item)
            played_ms = playback.played_ms(item, now)
            item.truncated = True
            if item.response_id is not None:
                self.interrupted.add(item.response_id)
            actions.append(
                Send(
                    {
                        "type": "conversation.item.truncate",
                        "event_id": self._next_id(),
                        "item_id": item.item_id,
                        "content_index": item.content_index,
                        "audio_end_ms": int(min(received_ms, played_ms)),
                    }
                )
            )
        playback.restart(output)
        return actions
