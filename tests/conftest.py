"""The CI guard for integration tests, and the check of ``VOICEGRID_TEST_TIME_SCALE``.

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
    """Integration tests need REDIS_URL; in CI a missing REDIS_URL is a failure, not a skip."""
    if os.environ.get("REDIS_URL"):
        return
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    integration = [item for item in items if "integration" in item.keywords]
    if integration and in_ci:
        raise pytest.UsageError(
            "CI is set but REDIS_URL is not: integration tests must run in CI "
            "(.ci/run sets REDIS_URL=redis://127.0.0.1:6379/0)"
        )
    for item in integration:
        item.add_marker(pytest.mark.skip(reason="needs a real Redis: set REDIS_URL to run"))
