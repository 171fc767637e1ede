"""Stream positions are validated exactly wherever a caller or a record supplies one.

Redis takes a stream id as two unsigned 64-bit numbers in ASCII digits. Anything else passed to
a multiplexed ``XREAD`` fails the read of every stream in it, so the gateway's ``after``, the
session record's ``cursor``/``cmd_cursor`` and ``RedisRealtimeClient.attach(after=...)`` are all
refused up front, naming the value and the expected form.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.gateway import BadRequest, parse_route
from protocol.errors import StreamEntryError
from protocol.streams import (
    STREAM_ID_PART_MAX,
    SessionRecord,
    decode_record,
    encode_record,
    entry_id_key,
)

REJECTED = [
    "99999999999999999999-0",  # 20 digits beyond 64 bits: the position that stalled a gateway
    f"{STREAM_ID_PART_MAX + 1}-0",
    f"0-{STREAM_ID_PART_MAX + 1}",
    "\u0661-\u0661",  # Arabic-Indic digits pass str.isdigit
    "1-\u00b2",  # a superscript two passes str.isdigit, int() refuses it
    "\uff11-0",  # a full-width one
    "1",
    "-1",
    "1-",
    "1-2-3",
    " 1-2",
    "$",
    "",
]


@pytest.mark.parametrize("position", REJECTED)
def test_entry_id_key_refuses_what_redis_refuses(position: str) -> None:
    with pytest.raises(StreamEntryError, match="ASCII digits, each at most 18446744073709551615"):
        entry_id_key(position)


def test_the_largest_ids_redis_accepts_are_accepted() -> None:
    top = f"{STREAM_ID_PART_MAX}-{STREAM_ID_PART_MAX}"
    assert entry_id_key(top) == (STREAM_ID_PART_MAX, STREAM_ID_PART_MAX)
    assert entry_id_key(top.encode()) == (STREAM_ID_PART_MAX, STREAM_ID_PART_MAX)
    assert entry_id_key("0-0") == (0, 0)


def test_a_long_bad_position_is_not_echoed_whole() -> None:
    with pytest.raises(StreamEntryError) as caught:
        entry_id_key("9" * 10_000)
    assert len(str(caught.value)) < 200


@given(st.binary(max_size=48))
def test_entry_id_key_never_raises_anything_but_stream_entry_error(raw: bytes) -> None:
    try:
        ms, seq = entry_id_key(raw)
    except StreamEntryError:
        return
    assert 0 <= ms <= STREAM_ID_PART_MAX and 0 <= seq <= STREAM_ID_PART_MAX


@pytest.mark.parametrize("field", ["cursor", "cmd_cursor"])
@pytest.mark.parametrize("position", ["99999999999999999999-0", "\u0661-\u0661", "garbage"])
def test_a_record_with_a_position_redis_would_refuse_is_malformed(
    field: str, position: str
) -> None:
    fields = encode_record(SessionRecord(provider="openai", model="m", config={}))
    fields[field] = position.encode()
    with pytest.raises(StreamEntryError, match="session record is invalid"):
        decode_record(fields)


@pytest.mark.parametrize(
    "query",
    [
        "after=99999999999999999999-0",
        "after=%D9%A1-%D9%A1",  # Arabic-Indic one, dash, one
        "after=1-2&skip=%C2%B2",  # skip=² used to raise (HTTP 500)
        "after=1-2&skip=%D9%A1",
        "after=1-2&skip=-1",
        "after=1-2&skip=1000001",
    ],
)
def test_the_gateway_refuses_positions_redis_would_refuse_with_400(query: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_route(f"/v1/sessions/abc?{query}")
    assert caught.value.status == 400


def test_a_refused_route_never_echoes_a_huge_value() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_route("/v1/sessions/abc?after=" + "7" * 5000)
    assert len(str(caught.value)) < 300
    with pytest.raises(BadRequest) as caught:
        parse_route("/v1/sessions/abc?" + "x" * 5000 + "=1")
    assert len(str(caught.value)) < 300
