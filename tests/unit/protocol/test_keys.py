"""Key layout: one hash tag per session, validated session ids and namespaces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ConfigError, InvalidSessionId
from protocol.keys import Keys, validate_namespace, validate_session_id

SAFE = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.",
    min_size=1,
    max_size=64,
)


@given(SAFE)
def test_every_key_of_a_session_shares_its_hash_tag(session_id: str) -> None:
    keys = Keys("ns").session(session_id)
    tag = "{" + session_id + "}"
    assert keys.hash_tag == tag
    for key in keys.all:
        # Redis Cluster hashes only the part between the first { and the next }
        start = key.index("{")
        assert key[start : key.index("}", start) + 1] == tag
        assert key.startswith("ns:")
    assert len(set(keys.all)) == len(keys.all)


def test_key_names_are_the_documented_ones() -> None:
    keys = Keys("voicegrid").session("call-42")
    assert keys.input == "voicegrid:{call-42}:in"
    assert keys.output == "voicegrid:{call-42}:out"
    assert keys.state == "voicegrid:{call-42}:state"
    assert keys.lease == "voicegrid:{call-42}:lease"
    layout = Keys("voicegrid")
    assert layout.queue == "voicegrid:queue"
    assert layout.live == "voicegrid:live"
    assert layout.job_id("call-42", 3) == "voicegrid:session:call-42:3"


@pytest.mark.parametrize(
    "bad",
    ["", "a" * 65, "a{b}", "a:b", "a b", "ünï", "x\n", "a/b", "*", None, 42, b"abc"],
)
def test_unsafe_session_ids_are_rejected_naming_the_value(bad: object) -> None:
    with pytest.raises(InvalidSessionId) as info:
        Keys().session(bad)  # type: ignore[arg-type]
    assert repr(bad)[:20] in str(info.value)
    assert "expected" in str(info.value)
    assert isinstance(info.value, ValueError)


@given(SAFE)
def test_safe_session_ids_pass_unchanged(session_id: str) -> None:
    assert validate_session_id(session_id) == session_id


def test_long_bad_values_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidSessionId) as info:
        validate_session_id("{" * 500)
    assert len(str(info.value)) < 250


@pytest.mark.parametrize("bad", ["", "a:b", "x" * 49, "sp ace"])
def test_bad_namespaces_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError):
        validate_namespace(bad)
    with pytest.raises(ConfigError):
        Keys(bad)


def test_job_ids_need_a_positive_epoch() -> None:
    with pytest.raises(ConfigError):
        Keys().job_id("abc", 0)
