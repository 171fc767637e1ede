"""``redisio.resp``: the fast packer sends exactly the bytes redis-py's packer sends."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from redisio.connection import open_redis
from redisio.resp import FastPackMixin, fast_packing

FastConnection = fast_packing(Connection)

_args = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=200),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.binary(min_size=6001, max_size=7000),
)


def packed(conn: Any, *args: Any) -> bytes:
    return b"".join(bytes(chunk) for chunk in conn.pack_commands([args]))


@given(st.sampled_from(["EVALSHA", "XADD", "XREAD", b"SET"]), st.lists(_args, max_size=40))
def test_same_bytes_as_redis_py(name: str | bytes, args: list[Any]) -> None:
    assert packed(FastConnection(), name, *args) == packed(Connection(), name, *args)


def test_a_fenced_write_with_audio_entries_is_identical() -> None:
    entry = [8, "v", b"1", "ts", 1_700_000_000_000_000, "ep", 3, "k", b"e", "e", "audio"]
    entry += ["d", bytes(960), "sr", 24000, "rid", "resp_1"]
    args = ["EVALSHA", "a" * 40, 4, "ns:{s}:lease", "ns:{s}:out", "ns:{s}:state", "ns:{s}:in"]
    args += ["1:worker", 500, 0, 0, *entry * 5]
    fast = FastConnection().pack_command(*args)
    assert len(fast) == 1  # one join, not a chunk per argument
    assert packed(FastConnection(), *args) == packed(Connection(), *args)


def test_multi_word_names_and_bad_types_behave_like_redis_py() -> None:
    assert packed(FastConnection(), "CONFIG GET", "maxmemory") == packed(
        Connection(), "CONFIG GET", "maxmemory"
    )
    for bad in (True, None, object()):
        with pytest.raises(DataError):
            FastConnection().pack_command("SET", "k", bad)


def test_every_connection_kind_keeps_its_transport() -> None:
    for base in (Connection, SSLConnection, UnixDomainSocketConnection):
        derived = fast_packing(base)
        assert issubclass(derived, base) and issubclass(derived, FastPackMixin)
        assert fast_packing(base) is derived and fast_packing(derived) is derived
    for url, base in (
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://:secret@example.invalid:6380/1", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ):
        pool = open_redis(url, queue="q").connection_pool
        assert issubclass(pool.connection_class, base)
        assert issubclass(pool.connection_class, FastPackMixin)


def test_the_c_packer_is_in_use() -> None:
    """hiredis is a declared dependency; without it every command would take the slow path."""
    from redisio import resp

    assert resp._PACKER is not None
