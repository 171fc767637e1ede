"""The CI guard for integration tests, and ``VOICEGRID_TEST_TIME_SCALE``: checked before anything
is collected, and applied to pytest-timeout's per-test limits too.

Helpers every suite shares are in ``tests/support/`` (``timing.py`` documents the time scale);
the fixtures of the component tests in ``tests/component/conftest.py``.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """A bad ``VOICEGRID_TEST_TIME_SCALE`` stops the run with one line naming it (the import
    raises ``pytest.UsageError``), before any test module is collected."""
    from .support import timing  # noqa: F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _scale_test_timeouts(config, items)
    _require_redis_in_ci(items)


def _scale_test_timeouts(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's pytest-timeout limit (its marker, else --timeout, PYTEST_TIMEOUT or the ini
    ``timeout``), scaled: the waits inside a test scale, so the limit around them must too."""
    from .support.timing import TIME_SCALE, scaled

    if TIME_SCALE == 1:
        return
    default = config.getoption("timeout", None) or os.environ.get("PYTEST_TIMEOUT")
    default = default or config.getini("timeout")
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = (marker.args[:1] or [marker.kwargs.get("timeout")])[0] if marker else default
        if seconds and float(seconds) > 0:
            item.add_marker(pytest.mark.timeout(scaled(float(seconds))), append=False)


def _require_redis_in_ci(items: list[pytest.Item]) -> None:
    """Integration tests need REDIS_URL; in CI a missing REDIS_URL is a failure, not a skip."""
    if os.environ.get("REDIS_URL"):
        return
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    # the Redis Cluster suite starts its own Redis (tests/integration/cluster/conftest.py)
    integration = [
        item
        for item in items
        if "integration" in item.keywords and item.get_closest_marker("cluster") is None
    ]
    if integration and in_ci:
        raise pytest.UsageError(
            "CI is set but REDIS_URL is not: integration tests must run in CI "
            "(.ci/run sets REDIS_URL=redis://127.0.0.1:6379/0)"
        )
    for item in integration:
        item.add_marker(pytest.mark.skip(reason="needs a real Redis: set REDIS_URL to run"))
