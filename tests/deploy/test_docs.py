"""docs/operations.md stays true to the code it documents.

Every environment variable of the worker and the gateway (``worker.settings.ENVIRONMENT``,
``ingress.settings.ENVIRONMENT``; read at test time, so a variable
added later must be documented) has a row with its default; every repository path the guide
names exists; the measured figures that ``make bench`` provides are marked as such.
"""

from __future__ import annotations

import re
from pathlib import Path

from ingress.settings import ENVIRONMENT as GATEWAY_ENVIRONMENT
from protocol.streams import CLOSED_TTL_S, INPUT_MAXLEN, OUTPUT_MAXLEN
from worker.settings import ENVIRONMENT as WORKER_ENVIRONMENT

#: every variable any process role reads
ENVIRONMENT = {**WORKER_ENVIRONMENT, **GATEWAY_ENVIRONMENT}

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
MEASURED = "(measured: see bench/README.md)"  # the placeholder the figures replaced


def _rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]+)`", cells[0]) if len(cells) >= 4 else None
        if match:
            rows[match.group(1)] = cells
    return rows


def test_every_variable_is_documented_with_its_default() -> None:
    rows = _rows()
    missing = set(ENVIRONMENT) - set(rows)
    assert not missing, f"docs/operations.md lacks rows for {sorted(missing)}"
    for name, (default, _) in ENVIRONMENT.items():
        shown = rows[name][1]
        expected = f"`{default}`" if default else "*(empty)*"
        assert shown == expected, f"{name}: the guide says {shown}, the code {expected}"


def test_documented_variables_exist() -> None:
    unknown = set(_rows()) - set(ENVIRONMENT)
    assert not unknown, f"the guide documents variables the code does not read: {unknown}"


def test_paths_named_in_the_guide_exist() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:deploy|docs|worker|protocol|tests|bench)/[\w./-]*)`", text))
    assert paths
    for path in paths:
        assert (REPO / path).exists(), f"docs/operations.md names {path}, which does not exist"


def test_capacity_figures_are_filled_in_from_the_bench() -> None:
    """Every sizing symbol carries a measured number, and none is left as a placeholder."""
    text = DOC.read_text()
    assert MEASURED not in text
    assert "make bench" in text
    for symbol in ("c", "m", "M0", "N_lat"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{symbol}` |"))
        assert re.search(r"\d", row.split("|")[3]), f"no measured value for {symbol}: {row}"


def test_stream_bounds_quoted_match_the_code() -> None:
    text = DOC.read_text()
    assert INPUT_MAXLEN == OUTPUT_MAXLEN, "the guide quotes one MAXLEN for both streams"
    assert f"{INPUT_MAXLEN} entries each" in text
    assert f"`CLOSED_TTL_S` ({CLOSED_TTL_S} s)" in text


def test_guide_covers_the_operations_topics() -> None:
    lines = DOC.read_text().splitlines()
    headings = {line.lstrip("#").strip() for line in lines if line.startswith("#")}
    for heading in (
        "Deploy on Kubernetes",
        "Configuration reference",
        "Capacity planning",
        "Redis operations per session-second",
        "Redis memory per session",
        "When one Redis primary is not enough",
        "Draining and rolling deploys",
        "A worker crashes (SIGKILL, OOM kill, node loss)",
        "Redis is unreachable",
        "A provider is down or rejecting requests",
        "Alerts and runbooks",
    ):
        assert heading in headings, f"docs/operations.md has no section {heading!r}"
