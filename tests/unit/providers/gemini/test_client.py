"""GeminiLiveClient without a socket: options, credentials, endpoints, close classification."""

from __future__ import annotations

import pytest

from protocol import (
    ConfigError,
    ConfigRejectedError,
    NotConnectedError,
    ProviderAuthError,
    ProviderConnectionError,
)
from providers import create_client
from providers.gemini import CONSTRAINED_URL, DEFAULT_URL, GeminiLiveClient

VERTEX = (
    "wss://us-central1-aiplatform.googleapis.com/ws/"
    "google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
)


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)


def test_registry_builds_the_gemini_client() -> None:
    client = create_client("gemini", model="gemini-live", api_key="k")
    assert isinstance(client, GeminiLiveClient) and client.provider == "gemini"


def test_api_key_header_by_default_and_never_in_the_display_url() -> None:
    endpoint = GeminiLiveClient(model="m", api_key="secret-key")._endpoint()
    assert endpoint.url == DEFAULT_URL
    assert dict(endpoint.headers) == {"x-goog-api-key": "secret-key"}
    assert "secret-key" not in endpoint.safe_url()


def test_api_key_in_the_query() -> None:
    endpoint = GeminiLiveClient(model="m", api_key="secret-key", auth="query")._endpoint()
    assert endpoint.url == DEFAULT_URL + "?key=secret-key"
    assert dict(endpoint.headers) == {}
    assert endpoint.safe_url() == DEFAULT_URL


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "env-key")
    endpoint = GeminiLiveClient(model="m")._endpoint()
    assert dict(endpoint.headers) == {"x-goog-api-key": "env-key"}


@pytest.mark.parametrize(
    ("auth", "url", "headers"),
    [
        ("header", CONSTRAINED_URL, {"Authorization": "Token auth_tokens/abc"}),
        ("query", CONSTRAINED_URL + "?access_token=auth_tokens%2Fabc", {}),
    ],
)
def test_ephemeral_tokens(auth: str, url: str, headers: dict[str, str]) -> None:
    endpoint = GeminiLiveClient(model="m", api_key="auth_tokens/abc", auth=auth)._endpoint()
    assert endpoint.url == url and dict(endpoint.headers) == headers
    assert "abc" not in endpoint.safe_url()


def test_vertex_bearer_token_and_extra_headers() -> None:
    client = GeminiLiveClient(
        model="projects/p/locations/us-central1/publishers/google/models/gemini-live-2.5",
        url=VERTEX,
        bearer_token="ya29.token",
        headers={"x-goog-user-project": "p"},
    )
    endpoint = client._endpoint()
    assert endpoint.url == VERTEX
    assert dict(endpoint.headers) == {
        "x-goog-user-project": "p",
        "Authorization": "Bearer ya29.token",
    }


def test_missing_credentials_raise_at_connect_time_only() -> None:
    client = GeminiLiveClient(model="m")
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        client._endpoint()
    loopback = GeminiLiveClient(model="m", url="ws://127.0.0.1:9/ws/x")
    assert dict(loopback._endpoint().headers) == {}


@pytest.mark.parametrize(
    "options",
    [
        {"auth": "cookie"},
        {"unknown_option": 1},
        {"max_buffer_ms": 0},
        {"go_away_margin_s": -1},
        {"bearer_token": ""},
        {"headers": {"a": 1}},
        {"transparent_resumption": "yes"},
        {"resume_buffer_bytes": 0},
        {"resume_margin_s": -0.1},
    ],
)
def test_invalid_options_raise(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        GeminiLiveClient(model="m", api_key="k", **options)


def test_invalid_url_raises_without_the_query() -> None:
    with pytest.raises(ConfigError) as info:
        GeminiLiveClient(model="m", url="https://example.com/x?key=secret")
    assert "secret" not in str(info.value)


def test_close_codes() -> None:
    client = GeminiLiveClient(model="m", api_key="k")
    not_found = client._classify_close(1008, "models/x is not found for API version v1beta")
    assert isinstance(not_found, ConfigRejectedError) and not not_found.recoverable
    assert not_found.code == "1008" and "not found" in not_found.message
    invalid = client._classify_close(1007, "Request contains an invalid argument.")
    assert isinstance(invalid, ConfigRejectedError) and invalid.code == "1007"
    bad_key = client._classify_close(1008, "API key not valid. Please pass a valid API key.")
    assert isinstance(bad_key, ProviderAuthError) and not bad_key.recoverable
    for code in (1011, 1001, 1000, None):
        error = client._classify_close(code, "Internal error encountered.")
        assert isinstance(error, ProviderConnectionError) and error.recoverable


def test_calls_before_connect_raise() -> None:
    client = GeminiLiveClient(model="m", api_key="k")
    with pytest.raises(NotConnectedError):
        client.send_audio(b"\x00\x00")
    with pytest.raises(NotConnectedError):
        client.send_tool_response([])
    with pytest.raises(NotConnectedError):
        client.request_response("hi")


def test_export_and_import_state() -> None:
    client = GeminiLiveClient(model="m", api_key="k")
    assert client.export_state() == {}
    assert client.import_state({}) is None
    assert client.import_state({"handle": "h-1"}) == "resumed"
    # the imported handle's state holds none of this client's caller frames yet
    assert client.export_state() == {"handle": "h-1", "input_frames": 0}
    frames = client._handshake_frames(reconnect=False)
    assert frames[0]["setup"]["sessionResumption"] == {"handle": "h-1"}
    assert client._reconnect_strategy() == "resumed"
    other = GeminiLiveClient(model="m", api_key="k")
    assert other.import_state({"handle": "h-1", "lost_calls": ["c1", 7]}) == "resumed"
    assert other._translator.lost_calls_cancelled()[0].payload.call_ids == ["c1"]


def test_transparent_resumption_defaults_on_for_vertex_ai_only() -> None:
    def resumption(client: GeminiLiveClient) -> object:
        return client._handshake_frames(reconnect=False)[0]["setup"]["sessionResumption"]

    vertex = GeminiLiveClient(model="m", url=VERTEX, bearer_token="t")
    assert resumption(vertex) == {"transparent": True}
    assert resumption(GeminiLiveClient(model="m", api_key="k")) == {}  # the Developer API
    # the caller decides when the default is wrong for an endpoint
    off = GeminiLiveClient(model="m", url=VERTEX, bearer_token="t", transparent_resumption=False)
    assert resumption(off) == {}
    on = GeminiLiveClient(model="m", api_key="k", transparent_resumption=True)
    assert resumption(on) == {"transparent": True}


def test_resume_stats_start_empty() -> None:
    stats = GeminiLiveClient(model="m", api_key="k").resume_stats
    assert (stats.buffered_messages, stats.resent_messages, stats.dropped_messages) == (0, 0, 0)
