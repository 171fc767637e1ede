"""The response lifecycle tables of ``providers/openai/responses.py``, walked directly."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from providers.openai.responses import (
    CALL_TRANSITIONS,
    REPLY_TRANSITIONS,
    RESPONSE_TRANSITIONS,
    Call,
    CallEvent,
    CallState,
    Phase,
    PhaseEvent,
    Reply,
    ReplyEvent,
    Response,
    ResponseLifecycle,
)
from providers.translator import IllegalTransition, Send, transition


def lifecycle() -> ResponseLifecycle:
    ids = itertools.count(1)
    lc = ResponseLifecycle(lambda: f"e{next(ids)}")
    lc.live = True
    return lc


@pytest.mark.parametrize(
    "table", [REPLY_TRANSITIONS, RESPONSE_TRANSITIONS, CALL_TRANSITIONS], ids=str
)
def test_every_state_of_a_table_is_reachable_or_initial(table: dict[Any, Any]) -> None:
    states = {state for state, _ in table} | set(table.values())
    kinds = {type(s) for s in states}
    assert len(kinds) == 1
    (kind,) = kinds
    initial = {Reply.IDLE, Phase.OPEN, CallState.STREAMING}
    assert set(kind) == states
    assert states - set(table.values()) <= initial


def test_reply_slot_request_created_done() -> None:
    lc = lifecycle()
    (send,) = lc.ask("Say hi.")
    assert isinstance(send, Send) and send.frame["response"] == {"instructions": "Say hi."}
    assert lc.reply is Reply.REQUESTED and lc.request is not None
    assert lc.ask(None) == []  # the slot is taken: queued
    lc.created("r1")
    assert (lc.reply, lc.active, lc.request) == (Reply.ACTIVE, "r1", None)
    _, pending = lc.finished("r1", cancelled=False)
    assert pending == [] and lc.reply is Reply.IDLE and lc.active is None
    assert lc.responses["r1"].phase is Phase.COVERED  # no tool calls: nothing owed
    (send,) = lc.maybe_respond()  # the queued request goes now
    assert "response" not in send.frame and lc.reply is Reply.REQUESTED


def test_automatic_response_closes_the_callers_turn() -> None:
    lc = lifecycle()
    lc.caller_turn_open = True
    assert lc.ask(None) == []  # not while the caller is mid-turn
    lc.created("auto")
    assert lc.reply is Reply.ACTIVE and not lc.caller_turn_open


def test_a_deferred_request_is_owed_again_a_rejected_one_is_not() -> None:
    lc = lifecycle()
    lc.ask("first")
    lc.request_deferred()
    assert lc.reply is Reply.IDLE and list(lc.queued) == ["first"]
    lc.maybe_respond()
    lc.request_rejected()
    assert lc.reply is Reply.IDLE and not lc.queued and lc.is_idle()


def test_tool_follow_up_is_owed_once_and_again_when_its_request_is_lost() -> None:
    lc = lifecycle()
    lc.created("r1")
    call, new = lc.register_call("c1", "get_weather", "r1")
    assert new and call.state is CallState.STREAMING
    call.to(CallEvent.ARGUMENTS)
    lc.finished("r1", cancelled=False)
    assert lc.responses["r1"].phase is Phase.DONE and not lc.due_followups()
    lc.answered("c1", None)
    assert len(lc.maybe_respond()) == 1
    assert lc.responses["r1"].phase is Phase.COVERED
    lc.connection_lost()  # the follow-up never got an answer: owed again
    assert lc.responses["r1"].phase is Phase.DONE and lc.reply is Reply.IDLE
    assert lc.maybe_respond() == []  # not live
    lc.live = True
    assert len(lc.maybe_respond()) == 1


def test_a_cancelled_response_reports_its_waiting_calls() -> None:
    lc = lifecycle()
    lc.created("r1")
    emitted, _ = lc.register_call("c1", "f", "r1")
    emitted.to(CallEvent.ARGUMENTS)
    streaming, _ = lc.register_call("c2", "f", "r1")
    _, pending = lc.finished("r1", cancelled=True)
    assert pending == ["c1"]
    assert emitted.state is streaming.state is CallState.CANCELLED
    assert lc.responses["r1"].phase is Phase.COVERED


@pytest.mark.parametrize("setup", ["idle", "requested", "active"])
def test_a_lost_connection_leaves_the_slot_idle_from_every_state(setup: str) -> None:
    lc = lifecycle()
    if setup != "idle":
        lc.ask("x")
    if setup == "active":
        lc.created("r1")
    cut_id, _ = lc.connection_lost()
    assert lc.reply is Reply.IDLE and lc.active is None and lc.request is None
    assert cut_id == ("r1" if setup == "active" else None)
    assert list(lc.queued) == (["x"] if setup == "requested" else [])


def test_illegal_transitions_are_local_bugs() -> None:
    with pytest.raises(IllegalTransition, match="'done' in state 'idle'"):
        transition(REPLY_TRANSITIONS, Reply.IDLE, ReplyEvent.DONE, "reply slot")
    call = Call("c1", "f", None)
    call.to(CallEvent.CANCEL)
    with pytest.raises(IllegalTransition, match="tool call c1"):
        call.to(CallEvent.ANSWER)
    with pytest.raises(IllegalTransition):
        Response("r1").to(PhaseEvent.COVER)  # only a done response is covered
