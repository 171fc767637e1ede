"""Reconnect reasons become a small, fixed set of metric label values."""

from __future__ import annotations

import pytest

from protocol import ConnectionEvent
from worker.session import reconnect_reason


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("goAway", "goaway"),
        ("goAway deadline", "goaway"),
        ("recycle", "recycle"),
        ("config update", "config"),
        ("Your session hit the maximum duration of 60 minutes.", "drop"),
        ("connection closed abnormally (1006): peer went away 10.0.0.7:443", "drop"),
        (None, "drop"),
    ],
)
def test_free_text_reasons_map_to_bounded_labels(reason: str | None, label: str) -> None:
    assert reconnect_reason(ConnectionEvent(reason=reason)) == label
