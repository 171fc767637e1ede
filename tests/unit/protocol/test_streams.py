"""Stream entry encodings: round trips (hypothesis) and malformed entries rejected with a reason."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    AudioEvent,
    ConfigUpdatedEvent,
    ConnectionEvent,
    DtmfEvent,
    ErrorEvent,
    ProviderAuthError,
    RealtimeSessionConfigUpdate,
    RealtimeToolResponse,
    ResponseDoneEvent,
    SessionTimeout,
    ToolCallEvent,
    TranscriptEvent,
    Usage,
)
from protocol.errors import RuntimeFailure, StreamEntryError
from protocol.streams import (
    SCHEMA_VERSION,
    AckEntry,
    AudioEntry,
    CommandEntry,
    DisconnectCommand,
    DtmfCommand,
    EventEntry,
    PingCommand,
    PlaybackCommand,
    RequestResponseCommand,
    SessionRecord,
    ToolResponseCommand,
    UpdateConfigCommand,
    decode_input,
    decode_output,
    decode_record,
    encode_ack,
    encode_audio,
    encode_command,
    encode_event,
    encode_record,
    entry_id_key,
    error_from_body,
    error_to_body,
)


def as_redis(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """What redis-py returns for an entry written with ``fields``."""
    out = {}
    for name, value in fields.items():
        if isinstance(value, int):
            value = str(value).encode()
        elif isinstance(value, str):
            value = value.encode()
        out[name.encode()] = value
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.binary(max_size=4000), st.integers(0, 2**62))
def test_audio_round_trips_as_raw_bytes(data: bytes, ts: int) -> None:
    fields = encode_audio(data, ts_us=ts)
    assert fields["d"] is data  # raw bytes, no base64 / JSON around them
    entry = decode_input(as_redis(fields))
    assert entry == AudioEntry(data=data, ts_us=ts)


tool_responses = st.builds(
    RealtimeToolResponse,
    call_id=st.text(min_size=1, max_size=30),
    output=json_values,
    name=st.none() | st.sampled_from(["weather", "lookup"]),
    is_error=st.booleans(),
)
commands = st.one_of(
    st.builds(ToolResponseCommand, responses=st.lists(tool_responses, min_size=1, max_size=3)),
    st.builds(RequestResponseCommand, instruction=st.none() | st.text(max_size=40)),
    st.just(PingCommand()),
    st.just(DisconnectCommand()),
    st.builds(DtmfCommand, digit=st.sampled_from(list("0123456789*#ABCD"))),
    st.builds(
        PlaybackCommand,
        response_id=st.none() | st.text(min_size=1, max_size=20),
        played_ms=st.integers(0, 10**7),
    ),
    st.builds(
        UpdateConfigCommand,
        update=st.builds(
            RealtimeSessionConfigUpdate,
            instructions=st.none() | st.text(max_size=40),
            temperature=st.none() | st.floats(0.0, 2.0),
        ),
    ),
)


@given(commands, st.integers(0, 2**62))
def test_commands_round_trip(command: Any, ts: int) -> None:
    entry = decode_input(as_redis(encode_command(command, ts_us=ts)))
    assert isinstance(entry, CommandEntry)
    assert entry.ts_us == ts
    assert entry.command == command


def test_a_dtmf_command_names_the_bad_digit() -> None:
    with pytest.raises(StreamEntryError, match="digit"):
        decode_input(
            as_redis({**encode_command(PingCommand()), "c": "dtmf", "b": b'{"digit":"x"}'})
        )


def test_a_config_update_carries_only_the_fields_set() -> None:
    fields = encode_command(UpdateConfigCommand(update=RealtimeSessionConfigUpdate(voice="alloy")))
    assert orjson.loads(fields["b"]) == {"update": {"voice": "alloy"}}  # type: ignore[arg-type]


events = st.one_of(
    st.builds(
        lambda d, r, rid: ("audio", AudioEvent(data=d, sample_rate=r, response_id=rid)),
        st.binary(max_size=2000),
        st.sampled_from([8000, 16000, 24000]),
        st.none() | st.text(min_size=1, max_size=10),
    ),
    st.builds(
        lambda c, n, a: ("tool-call", ToolCallEvent(call_id=c, name=n, arguments=a)),
        st.text(max_size=10),
        st.text(max_size=10),
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    ),
    st.builds(
        lambda role, text, final: (
            "transcript",
            TranscriptEvent(role=role, text=text, final=final, item_id=None),
        ),
        st.sampled_from(["user", "assistant"]),
        st.text(max_size=50),
        st.booleans(),
    ),
    st.builds(
        lambda i, o: (
            "response-done",
            ResponseDoneEvent(
                response_id="r", usage=Usage(input_tokens=i, output_tokens=o, total_tokens=i + o)
            ),
        ),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    ),
    st.sampled_from(
        [
            ("config-updated", ConfigUpdatedEvent(strategy="resumed")),
            ("reconnected", ConnectionEvent(reason="takeover", strategy="replayed")),
            ("closed", ConnectionEvent(reason="disconnect", code=1000)),
            ("error", ErrorEvent(code="x", message="y", recoverable=False)),
            ("dtmf", DtmfEvent(digit="#")),
        ]
    ),
)


@given(events, st.integers(1, 10**6), st.integers(0, 2**62))
def test_events_round_trip(event: tuple[str, Any], epoch: int, ts: int) -> None:
    name, payload = event
    entry = decode_output(as_redis(encode_event(name, payload, epoch=epoch, ts_us=ts)))
    assert entry == EventEntry(name=name, payload=payload, ts_us=ts, epoch=epoch)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4), st.integers(1, 99))
def test_acks_round_trip(result: dict[str, Any], epoch: int) -> None:
    entry = decode_output(as_redis(encode_ack("1-2", epoch=epoch, result=result, ts_us=5)))
    assert entry == AckEntry(ref="1-2", ok=True, result=result, error=None, ts_us=5, epoch=epoch)


def test_error_acks_rebuild_the_error_class_and_code() -> None:
    fields = encode_ack(
        "connect", epoch=1, error=ProviderAuthError("bad key", code="invalid_api_key")
    )
    entry = decode_output(as_redis(fields))
    assert isinstance(entry, AckEntry) and not entry.ok
    assert isinstance(entry.error, ProviderAuthError)
    assert entry.error.code == "invalid_api_key" and not entry.error.recoverable
    assert isinstance(error_from_body(error_to_body(SessionTimeout("late"))), SessionTimeout)
    assert isinstance(error_from_body(error_to_body(KeyError("x"))), RuntimeFailure)
    assert type(error_from_body({"type": "SystemExit", "message": "no"})) is RuntimeFailure


GOOD_AUDIO = {"v": b"1", "ts": b"1", "k": b"a", "d": b"\x00\x00"}


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"ts": b"1", "k": b"a", "d": b""}, "'v'", "missing"),
        ({**GOOD_AUDIO, "v": b"2"}, "'v'", "schema version"),
        ({**GOOD_AUDIO, "ts": b"soon"}, "'ts'", "integer"),
        ({**GOOD_AUDIO, "ts": b"-5"}, "'ts'", "non-negative"),
        ({**GOOD_AUDIO, "k": b"z"}, "'k'", "expected"),
        ({"v": b"1", "ts": b"1", "k": b"a"}, "'d'", "missing"),
        ({"v": b"1", "ts": b"1", "k": b"c", "c": b"fly", "b": b"{}"}, "'c'", "expected one of"),
        ({"v": b"1", "ts": b"1", "k": b"c", "c": b"ping", "b": b"[1]"}, "'b'", "JSON object"),
        ({"v": b"1", "ts": b"1", "k": b"c", "c": b"ping", "b": b"{"}, "'b'", "not valid JSON"),
        ({"v": b"1", "ts": b"1", "k": b"c", "c": b"\xff", "b": b"{}"}, "'c'", "UTF-8"),
        (
            {"v": b"1", "ts": b"1", "k": b"c", "c": b"tool_response", "b": b'{"responses": []}'},
            "'b'",
            "responses",
        ),
        (
            {"v": b"1", "ts": b"1", "k": b"c", "c": b"ping", "b": b'{"extra": 1}'},
            "'b'",
            "extra",
        ),
    ],
)
def test_malformed_input_entries_name_the_field_and_reason(
    fields: dict[str, bytes], field: str, reason: str
) -> None:
    with pytest.raises(StreamEntryError) as info:
        decode_input(fields)
    message = str(info.value)
    assert field in message and reason in message, message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"v": b"1", "ts": b"1", "k": b"e", "e": b"audio", "d": b""}, "'ep'"),
        ({"v": b"1", "ts": b"1", "ep": b"1", "k": b"e", "e": b"boom", "b": b"{}"}, "'e'"),
        ({"v": b"1", "ts": b"1", "ep": b"1", "k": b"e", "e": b"audio", "d": b""}, "'sr'"),
        ({"v": b"1", "ts": b"1", "ep": b"1", "k": b"e", "e": b"error", "b": b"{}"}, "'b'"),
        (
            {"v": b"1", "ts": b"1", "ep": b"1", "k": b"k", "ref": b"1-1", "ok": b"2", "b": b"{}"},
            "'ok'",
        ),
        ({"v": b"1", "ts": b"1", "ep": b"1", "k": b"a", "d": b""}, "'k'"),
    ],
)
def test_malformed_output_entries_name_the_field(fields: dict[str, bytes], field: str) -> None:
    with pytest.raises(StreamEntryError, match=field):
        decode_output(fields)


def test_encoding_an_event_with_the_wrong_payload_fails() -> None:
    with pytest.raises(StreamEntryError):
        encode_event("audio", ErrorEvent(code="a", message="b"), epoch=1)


@given(
    st.builds(
        SessionRecord,
        provider=st.sampled_from(["openai", "gemini"]),
        model=st.text(min_size=1, max_size=20),
        config=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        status=st.sampled_from(["pending", "live", "closed"]),
        epoch=st.integers(0, 10**6),
        owner=st.text(max_size=20),
        cursor=st.sampled_from(["0-0", "17-3"]),
        provider_state=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        conversation=st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
        handoff=st.integers(0, 10),
    )
)
def test_session_records_round_trip(record: SessionRecord) -> None:
    assert decode_record(as_redis(encode_record(record))) == record  # type: ignore[arg-type]


def test_malformed_records_are_rejected() -> None:
    good = as_redis(encode_record(SessionRecord(provider="openai", model="m", config={})))  # type: ignore[arg-type]
    with pytest.raises(StreamEntryError, match="'config'"):
        decode_record({**good, b"config": b"{"})
    with pytest.raises(StreamEntryError, match="epoch"):
        decode_record({**good, b"epoch": b"minus one"})
    with pytest.raises(StreamEntryError, match="'v'"):
        decode_record({**good, b"v": b"7"})


def test_entry_ids_sort_numerically_and_reject_garbage() -> None:
    assert entry_id_key("10-0") > entry_id_key("9-99")
    assert entry_id_key(b"5-1") == (5, 1)
    with pytest.raises(StreamEntryError):
        entry_id_key("$")


def test_schema_version_is_one() -> None:
    assert SCHEMA_VERSION == 1
    assert encode_audio(b"", ts_us=0)["v"] == b"1"


# ASCII digits only (Redis refuses other digits), each part within 64 bits
_ID_PATTERN = r"([0-9]{1,20})-([0-9]{1,20})"


@given(st.text(alphabet="0123456789-x٣ ", max_size=46))
def test_entry_id_key_accepts_exactly_the_documented_form(text: str) -> None:
    match = re.fullmatch(_ID_PATTERN, text)
    if match is not None and max(int(match.group(1)), int(match.group(2))) >= 2**64:
        match = None
    if match is None:
        with pytest.raises(StreamEntryError, match="expected '<ms>-<seq>'"):
            entry_id_key(text)
    else:
        assert entry_id_key(text) == (int(match.group(1)), int(match.group(2)))


@given(
    st.binary(max_size=64),
    st.integers(0, 2**62),
    st.sampled_from([None, b"", b"-5", b" 7", b"1.5", "12", 12]),
    st.sampled_from([b"1", b"2", "1"]),
)
def test_decode_input_fast_path_agrees_with_the_full_checks(
    data: bytes, ts: int, odd_ts: bytes | str | int | None, version: bytes | str
) -> None:
    fields: dict[Any, Any] = {**as_redis(encode_audio(data, ts_us=ts)), b"v": version}
    if odd_ts is not None:
        fields[b"ts"] = odd_ts
    try:
        # str field names: the same entry, but only the full checks look names up that way
        expected: Any = decode_input({name.decode(): value for name, value in fields.items()})
    except StreamEntryError as exc:
        expected = str(exc)
    try:
        got: Any = decode_input(fields)
    except StreamEntryError as exc:
        got = str(exc)
    assert got == expected
    if version == b"1" and odd_ts is None:
        assert got == AudioEntry(data=data, ts_us=ts)


@given(
    st.binary(max_size=64),
    st.integers(0, 2**62),
    st.integers(0, 10**6),
    st.sampled_from([None, "r1", "é", ""]),
    st.sampled_from([None, (b"sr", b"-1"), (b"sr", b"x"), (b"ep", b""), (b"v", b"2"), (b"d", "s")]),
)
def test_decode_output_fast_path_agrees_with_the_full_checks(
    data: bytes, ts: int, rate: int, rid: str | None, odd: tuple[bytes, Any] | None
) -> None:
    event = AudioEvent(data=data, sample_rate=rate, response_id=rid)
    fields: dict[Any, Any] = as_redis(encode_event("audio", event, epoch=4, ts_us=ts))
    if odd is not None:
        fields[odd[0]] = odd[1]
    try:
        # str field names: the same entry, but only the full checks look names up that way
        expected: Any = decode_output({name.decode(): value for name, value in fields.items()})
    except StreamEntryError as exc:
        expected = str(exc)
    try:
        got: Any = decode_output(fields)
    except StreamEntryError as exc:
        got = str(exc)
    assert got == expected
    if odd is None:
        assert got == EventEntry(name="audio", payload=event, ts_us=ts, epoch=4)
