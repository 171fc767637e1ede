"""Create requests (``<ns>:create``): the documented fields, a named reason for every refusal."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol import RealtimeSessionConfig, ToolDefinition
from protocol.create import (
    CREATE_MAX_BYTES,
    RequestRejected,
    decode_create_request,
    encode_create_request,
    encode_rejection,
    rejection_entries,
)
from protocol.errors import ConfigError, InvalidSessionId
from protocol.streams import AckEntry, EventEntry, decode_output


def as_redis(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """Fields as redis-py returns them from XREAD."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def request(**changes: Any) -> dict[bytes, bytes]:
    """A request as a non-Python producer writes it (text values), changed or without fields
    set to ``None``."""
    fields: dict[str, Any] = {
        "v": "1",
        "sid": "call-7",
        "provider": "openai",
        "model": "gpt-realtime",
        "config": '{"instructions": "Be brief."}',
    }
    fields.update(changes)
    return as_redis({k: v for k, v in fields.items() if v is not None})


def rejected(fields: dict[bytes, bytes]) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        decode_create_request(fields)
    return info.value


def test_the_python_encoding_is_what_the_worker_reads() -> None:
    config = RealtimeSessionConfig(tools=[ToolDefinition(name="weather")], instructions="Hi")
    fields = encode_create_request(
        session_id="s-1", provider="openai", model="m", config=config, options={"x": 1}
    )
    parsed = decode_create_request(as_redis(fields))
    assert (parsed.session_id, parsed.provider, parsed.model) == ("s-1", "openai", "m")
    assert parsed.config == config
    assert parsed.options == {"x": 1}


def test_a_minimal_request_needs_no_config_and_no_options() -> None:
    parsed = decode_create_request(request(config=None))
    assert parsed.config == RealtimeSessionConfig()
    assert parsed.options == {}


@pytest.mark.parametrize(
    ("changes", "code", "needle"),
    [
        ({"config": "{not json"}, "invalid_config", "field 'config' is not JSON"),
        ({"config": "[1]"}, "invalid_config", "expected a JSON object"),
        (
            {"config": '{"input_audio": {"sample_rate": 11025}}'},
            "invalid_config",
            "sample_rate 11025 is not supported",
        ),
        ({"config": '{"instrutions": "x"}'}, "invalid_config", "instrutions"),
        ({"options": '{"api_key": "sk-x"}'}, "invalid_request", "['api_key']"),
        ({"options": '"x"'}, "invalid_request", "field 'options' is a JSON str"),
        ({"provider": ""}, "invalid_request", "field 'provider' is ''"),
        ({"model": None}, "invalid_request", "missing fields ['model']"),
        ({"v": "2"}, "unsupported_version", "field 'v' is '2'"),
        ({"ts": "soon"}, "invalid_request", "field 'ts' is 'soon'"),
        ({"colour": "blue"}, "invalid_request", "unknown fields ['colour']"),
        (
            {"config": "{}", "options": '{"a": "' + "x" * CREATE_MAX_BYTES + '"}'},
            "invalid_request",
            f"expected at most {CREATE_MAX_BYTES}",
        ),
    ],
)
def test_a_bad_request_is_refused_naming_the_field(
    changes: dict[str, Any], code: str, needle: str
) -> None:
    error = rejected(request(**changes))
    assert error.code == code
    assert needle in str(error.error)
    assert error.session_id == "call-7"  # answerable on the session's own output stream
    assert isinstance(error.error, ConfigError)


@pytest.mark.parametrize("sid", ["has space", "a{b}", "x" * 65, ""])
def test_an_invalid_session_id_has_no_output_stream(sid: str) -> None:
    error = rejected(request(sid=sid))
    assert (error.code, error.session_id) == ("invalid_session_id", None)
    assert isinstance(error.error, InvalidSessionId)


def test_a_missing_session_id_is_named() -> None:
    error = rejected(request(sid=None))
    assert error.code == "invalid_session_id"
    assert "missing fields ['sid']" in str(error.error)


def test_a_rejection_is_error_then_the_failed_ack_then_closed() -> None:
    error = rejected(request(config="[]"))
    entries = [decode_output(as_redis(e)) for e in rejection_entries("1-0", error)]
    first, ack, last = entries
    assert isinstance(first, EventEntry) and first.name == "error"
    assert first.payload.model_dump() == {
        "code": "invalid_config",
        "message": str(error.error),
        "recoverable": False,
    }
    assert isinstance(ack, AckEntry) and (ack.ref, ack.ok) == ("1-0", False)
    assert isinstance(ack.error, ConfigError)
    assert isinstance(last, EventEntry) and last.name == "closed"
    assert last.payload.model_dump()["reason"] == "rejected"


def test_the_rejected_stream_entry_names_the_request() -> None:
    error = rejected(request(sid="bad sid"))
    entry = encode_rejection("5-1", b"bad sid", error)
    assert {k: entry[k] for k in ("req", "sid", "code", "type")} == {
        "req": "5-1",
        "sid": "bad sid",
        "code": "invalid_session_id",
        "type": "InvalidSessionId",
    }
    assert orjson.dumps(entry["message"])  # plain text
