"""The shape both translators share (``providers/translator.py``): deep_merge for
``provider_options``, the same treatment of the same options in OpenAI and Gemini."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from protocol import RealtimeSessionConfig
from providers.gemini.translator import GeminiTranslator
from providers.openai.translator import OpenAITranslator
from providers.translator import deep_merge

# ----------------------------------------------------------------------------- deep_merge


def test_deep_merge_merges_dicts_recursively_and_keeps_siblings() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert deep_merge(base, {"a": {"c": {"x": 9}}}) == {
        "a": {"b": 1, "c": {"d": 2, "x": 9}},
        "e": 3,
    }


def test_deep_merge_none_deletes_a_key_at_any_depth() -> None:
    base = {"a": {"b": 1, "c": 2}, "e": 3}
    assert deep_merge(base, {"a": {"b": None}, "e": None}) == {"a": {"c": 2}}
    # deleting what is not there is a no-op, also inside a dict the override adds
    assert deep_merge(base, {"zz": None, "new": {"x": None, "y": 1}}) == {**base, "new": {"y": 1}}


def test_deep_merge_lists_and_scalars_replace_whole() -> None:
    base = {"list": [1, 2, 3], "n": 1, "d": {"k": 1}, "s": "x"}
    merged = deep_merge(base, {"list": [4], "n": "one", "d": [1], "s": {"k": 2}})
    assert merged == {"list": [4], "n": "one", "d": [1], "s": {"k": 2}}


def test_deep_merge_returns_a_new_dict_and_never_changes_its_inputs() -> None:
    base = {"a": {"b": [1]}, "keep": {"x": 1}}
    override = {"a": {"c": [2]}, "keep": None}
    before = copy.deepcopy((base, override))
    merged = deep_merge(base, override)
    assert (base, override) == before
    merged["a"]["b"].append(99)
    merged["a"]["c"].append(99)
    assert (base, override) == before  # nothing in the result is shared with the inputs


# ----------------------------------------------------------------------------- both providers

Payload = Callable[[dict[str, Any]], dict[str, Any]]


def openai_session(options: dict[str, Any]) -> dict[str, Any]:
    config = RealtimeSessionConfig(instructions="Be brief.", provider_options=options)
    return OpenAITranslator(config).session_payload(config)


def gemini_setup(options: dict[str, Any]) -> dict[str, Any]:
    config = RealtimeSessionConfig(instructions="Be brief.", provider_options={"setup": options})
    setup: dict[str, Any] = GeminiTranslator(model="m", config=config).setup_frame(resume=False)[
        "setup"
    ]
    return setup


# (payload builder, a default key the translator writes, a default dict key to merge into)
PROVIDERS: dict[str, tuple[Payload, str, str]] = {
    "openai": (openai_session, "output_modalities", "audio"),
    "gemini": (gemini_setup, "contextWindowCompression", "generationConfig"),
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> tuple[Payload, str, str]:
    return PROVIDERS[request.param]


def test_same_options_same_semantics_in_both_providers(provider: tuple[Payload, str, str]) -> None:
    payload, default_key, dict_key = provider
    plain = payload({})
    assert default_key in plain and isinstance(plain[dict_key], dict)
    options: dict[str, Any] = {
        default_key: None,  # deletes a default
        dict_key: {"added": {"deep": [1, 2]}},  # merges beside the defaults
        "extra": ["a", "b"],  # adds
        "absent": None,  # deleting what is not there: nothing happens
    }
    merged = payload(options)
    assert merged == deep_merge(plain, options)
    assert default_key not in merged and "absent" not in merged
    assert merged[dict_key] == {**plain[dict_key], "added": {"deep": [1, 2]}}
    assert merged["extra"] == ["a", "b"]


def test_a_none_deletes_a_nested_default_in_both_providers(
    provider: tuple[Payload, str, str],
) -> None:
    payload, _, dict_key = provider
    plain = payload({})
    first = sorted(plain[dict_key])[0]
    merged = payload({dict_key: {first: None}})
    assert first not in merged[dict_key]
    assert merged[dict_key] == {k: v for k, v in plain[dict_key].items() if k != first}


def test_the_payload_shares_nothing_with_the_options_in_both_providers(
    provider: tuple[Payload, str, str],
) -> None:
    payload, _, dict_key = provider
    options: dict[str, Any] = {dict_key: {"added": {"deep": [1]}}, "extra": [1]}
    before = copy.deepcopy(options)
    merged = payload(options)
    merged[dict_key]["added"]["deep"].append(2)
    merged["extra"].append(2)
    assert options == before
