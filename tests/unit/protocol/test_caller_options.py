"""Which provider options a caller may set is an explicit, bounded allow-list (the operator's).

Before: ``recycle_after_s=0.01`` (334 provider connections in 5 s for one session),
``reconnect_attempts=1e9`` with zero backoff and ``max_buffer_ms=1e9`` were accepted from
callers: against the real provider, a reconnect storm on the workers' API key.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ConfigError
from protocol.options import OptionRule, check_caller_options, parse_caller_options
from providers import caller_options, check_options
from redisio.settings import CommonSettings


@pytest.mark.parametrize(
    ("provider", "options", "match"),
    [
        ("openai", {"recycle_after_s": 0.01}, "'recycle_after_s' is not one a caller may set"),
        ("openai", {"reconnect_attempts": 1e9}, "'reconnect_attempts' is not one"),
        ("openai", {"backoff_initial_s": 0}, "'backoff_initial_s' is not one"),
        ("openai", {"max_buffer_ms": 1e9}, r"max_buffer_ms=1000000000\.0 is refused"),
        ("openai", {"max_buffer_ms": 10**9}, "expected an integer in 200..10000"),
        ("openai", {"max_buffer_ms": True}, "expected an integer"),
        ("openai", {"transcription_model": "m" * 129}, "at most 128 characters"),
        ("openai", {"auth_header": "api-key"}, "'auth_header' is not one"),
        ("gemini", {"headers": {"x": "y"}}, "'headers' is not one"),
        ("gemini", {"bearer_token": "t"}, "'bearer_token' is not one"),
        ("gemini", {"max_history": float("nan")}, "expected an integer in 10..200"),
        ("custom", {"anything": 1}, "allowed: none"),
    ],
)
def test_options_outside_the_defaults_are_refused_naming_them(
    provider: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        check_options(provider, options, allowed=None)


def test_the_defaults_let_callers_shape_their_own_call() -> None:
    check_options(
        "openai",
        {"transcription_model": "gpt-4o-mini-transcribe", "max_buffer_ms": 5000},
        allowed=None,
    )
    check_options("gemini", {"max_history": 50}, allowed=None)
    assert "recycle_after_s" not in caller_options("openai")


def test_the_operator_replaces_the_allow_list() -> None:
    rules = parse_caller_options("max_buffer_ms:int:100..200, voice:text:16, fast:flag")
    assert rules is not None
    check_options("openai", {"max_buffer_ms": 150, "voice": "alloy", "fast": True}, allowed=rules)
    with pytest.raises(ConfigError, match="transcription_model"):
        check_options("openai", {"transcription_model": "x"}, allowed=rules)
    assert parse_caller_options("") is None
    assert parse_caller_options("none") == {}
    with pytest.raises(ConfigError, match="not one a caller may set"):
        check_options("openai", {"max_buffer_ms": 1000}, allowed={})


@pytest.mark.parametrize(
    "spec", ["x", "x:int", "x:int:5", "x:int:5..1", "x:int:1.5..2", "x:number:a..b", "1x:flag"]
)
def test_a_bad_spec_is_refused_at_start_up(spec: str) -> None:
    with pytest.raises(ConfigError, match="VOICEGRID_CALLER_OPTIONS"):
        parse_caller_options(spec)
    with pytest.raises(ConfigError, match="VOICEGRID_CALLER_OPTIONS"):
        CommonSettings.common_from_env({"VOICEGRID_CALLER_OPTIONS": spec})


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300)),
        max_size=4,
    )
)
def test_checking_never_raises_anything_but_config_error(options: dict[str, Any]) -> None:
    for provider in ("openai", "gemini"):
        try:
            check_caller_options(options, caller_options(provider), provider=provider)
        except ConfigError as exc:
            assert len(str(exc)) < 400  # a caller's megabyte is never echoed whole
        else:
            for name, value in options.items():
                assert caller_options(provider)[name].accepts(value)


def test_rules_describe_themselves() -> None:
    assert OptionRule("int", low=1, high=2).expected() == "an integer in 1..2"
    assert OptionRule("flag").expected() == "true or false"
