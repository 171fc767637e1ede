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


@given(st.binary(max_size=40))
def test_key_slot_is_redis_clusters(key: bytes) -> None:
    from redis.crc import key_slot as redis_key_slot

    from protocol.keys import key_slot

    assert key_slot(key) == redis_key_slot(key)


@given(SAFE)
def test_cluster_layout_tags_every_key_of_a_session_with_its_bucket(session_id: str) -> None:
    from protocol.keys import key_slot

    layout = Keys("ns", buckets=24)
    keys = layout.session(session_id)
    bucket = layout.bucket_of(session_id)
    assert bucket == key_slot(session_id) % 24
    assert keys.tag == layout.bucket_tag(bucket)
    assert keys.input == f"ns:{{{keys.tag}}}:{session_id}:in"
    assert {key_slot(k) for k in (*keys.all, keys.media_token("abc"))} == {key_slot(keys.tag)}
    assert keys.hash_tag == "{" + keys.tag + "}"


def test_bucket_tags_spread_evenly_over_evenly_split_slots() -> None:
    from protocol.keys import CLUSTER_SLOTS, bucket_tag, key_slot

    for buckets in (1, 3, 12, 24, 100):
        slots = [key_slot(bucket_tag(b, buckets)) for b in range(buckets)]
        width = CLUSTER_SLOTS / buckets
        # each bucket's tag lies in the middle half of its share of the slots
        assert all(
            b * width + width / 4 <= s < b * width + 3 * width / 4 for b, s in enumerate(slots)
        )
        for primaries in (1, 2, 3, 4, 6):
            if buckets % primaries == 0:
                per_primary = [
                    sum(1 for s in slots if s * primaries // CLUSTER_SLOTS == p)
                    for p in range(primaries)
                ]
                assert len(set(per_primary)) == 1, (buckets, primaries, per_primary)
    assert bucket_tag(7, 24) == "vg7-55"  # docs/streams.md names it: a change moves live keys


def test_bucket_counts_are_checked() -> None:
    with pytest.raises(ConfigError, match="buckets"):
        Keys("ns", buckets=-1)
    with pytest.raises(ConfigError, match="buckets"):
        Keys("ns", buckets=5000)
    assert Keys("ns").session("a").input == "ns:{a}:in"  # single-node layout by default
