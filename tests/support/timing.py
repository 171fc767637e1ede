"""One time scale for every wait in the test suite: ``VOICEGRID_TEST_TIME_SCALE``.

Every timeout and deadline a test sets (``asyncio.timeout``, ``wait_for``, ``eventually``, a
``Recorder`` or simulator wait, a subprocess wait, a wall-clock bound taken from the docs) is
``scaled(seconds)``: the figure for an idle developer machine times ``TIME_SCALE``. On a slow or
loaded machine run ``VOICEGRID_TEST_TIME_SCALE=3 make test``; the default is 1. Figures the code
under test is configured with (lease TTLs, drain budgets) scale too where a test sets them, so
their ratios to the waits stay the same, and so do pytest-timeout's per-test limits
(``tests/conftest.py``).

Shared test helpers live in ``tests/support/`` and are imported relatively (``from
...support.timing import scaled``): pytest imports the tests as the package ``tests``
(``--import-mode=importlib``, ``tests/`` has no ``__init__.py``; pytest creates the namespace).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Mapping

import pytest

__all__ = ["ENV_VAR", "TIME_SCALE", "eventually", "scaled", "time_scale"]

ENV_VAR = "VOICEGRID_TEST_TIME_SCALE"


def time_scale(environ: Mapping[str, str]) -> float:
    """The scale ``environ`` asks for (1 when unset); a value that is not a number > 0 raises
    ``ValueError`` naming the variable."""
    raw = environ.get(ENV_VAR, "").strip() or "1"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{ENV_VAR}={raw!r} is invalid: expected a number > 0, e.g. 1 or 2.5")
    return value


def _from_environment() -> float:
    try:
        return time_scale(os.environ)
    except ValueError as exc:  # stops pytest with this one line, before any test runs
        raise pytest.UsageError(str(exc)) from None


TIME_SCALE = _from_environment()


def scaled(seconds: float) -> float:
    """``seconds`` (a figure for an idle machine) times ``VOICEGRID_TEST_TIME_SCALE``."""
    return seconds * TIME_SCALE


async def eventually(predicate: Callable[[], object], within: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, polling every 10 ms (for state that signals no event);
    ``within`` seconds, scaled."""
    async with asyncio.timeout(scaled(within)):
        while not predicate():  # noqa: ASYNC110 - polled state has no event to wait on
            await asyncio.sleep(0.01)
