"""``VOICEGRID_TEST_TIME_SCALE``: the one knob every test wait is scaled by (tests/support)."""

from __future__ import annotations

import pytest

from ..support.timing import ENV_VAR, time_scale


@pytest.mark.parametrize(("raw", "scale"), [(None, 1.0), ("", 1.0), ("1", 1.0), (" 2.5 ", 2.5)])
def test_the_scale_comes_from_the_environment(raw: str | None, scale: float) -> None:
    assert time_scale({} if raw is None else {ENV_VAR: raw}) == scale


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "fast"])
def test_a_scale_that_is_not_a_positive_number_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"^{ENV_VAR}='{raw}' is invalid: expected a number > 0"):
        time_scale({ENV_VAR: raw})
