"""Shared fixtures for the deploy tests: the repository's deploy files, parsed, and the tools.

Everything here is offline: ``kubectl kustomize`` renders the overlays, ``promtool`` checks the
rules and the metrics exposition, ``kubernetes-validate`` and ``jsonschema`` check the objects.
A missing tool skips its tests on a developer machine and fails them in CI (``CI`` set), where
``.ci/run`` is expected to provide it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod", "keda", "cluster")
RULES_FILE = DEPLOY / "prometheus" / "voicegrid-rules.yml"
ADAPTER_FILE = DEPLOY / "prometheus" / "prometheus-adapter.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "voicegrid.json"

# Prints the exposition of redisio.metrics.REGISTRY after one sample of every metric it holds. It
# runs in a subprocess so the samples never leak into the registry other tests assert on.
_EXPOSITION_SCRIPT = """
import sys
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from redisio import metrics

for value in vars(metrics).values():
    if not isinstance(value, (Counter, Gauge, Histogram)):
        continue
    names = value._labelnames
    child = value.labels(*(["x"] * len(names))) if names else value
    if isinstance(value, Counter):
        child.inc()
    elif isinstance(value, Gauge):
        child.set(1)
    else:
        child.observe(0.003)
sys.stdout.write(generate_latest(metrics.REGISTRY).decode())
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, purpose: str) -> str:
    """Path of ``name``; skip without it locally, fail without it in CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed; it is needed to {purpose}"
    if _in_ci():
        pytest.fail(f"{message}. CI must provide it (.ci/run).", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl", "render the kustomize overlays (kubectl kustomize)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "check the Prometheus rules and metrics (Debian: prometheus)")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """overlay name -> every object ``kubectl kustomize`` renders for it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        path = DEPLOY / "k8s" / "overlays" / overlay
        result = subprocess.run(
            [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=scaled(60)
        )
        assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def objects(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> list[dict[str, Any]]:
    return rendered[overlay]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


@pytest.fixture(scope="session")
def find_objects() -> Callable[..., list[dict[str, Any]]]:
    """``find_objects(objects, kind, name=None)``: the objects of that kind (and name)."""
    return find


@pytest.fixture(scope="session")
def exposition() -> str:
    """The worker registry's text exposition with one sample of every metric."""
    result = subprocess.run(
        [sys.executable, "-c", _EXPOSITION_SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def bucket_bounds(exposition: str) -> dict[str, set[str]]:
    """histogram ``<name>_bucket`` -> the ``le`` label values the worker exports for it."""
    bounds: dict[str, set[str]] = {}
    for match in re.finditer(r'^(\w+_bucket)\{[^}]*\ble="([^"]+)"', exposition, re.MULTILINE):
        bounds.setdefault(match.group(1), set()).add(match.group(2))
    return bounds


@pytest.fixture(scope="session")
def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return groups


@pytest.fixture(scope="session")
def rules(rule_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in rule_groups for rule in group["rules"]]


@pytest.fixture(scope="session")
def recorded_names(rules: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(rule["record"] for rule in rules if "record" in rule)


@pytest.fixture(scope="session")
def adapter_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ADAPTER_FILE.read_text())
    return config


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return board


# --- PromQL: which series names does an expression read? ---------------------------------------

_PROMQL_WORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "start",
        "end",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects.

    A small lexer, enough for the expressions this repository writes: strings, label matchers,
    ranges and grouping label lists are removed, then every identifier that is not a function
    call, keyword or number is a metric name. Grafana (``$var``) and prometheus-adapter
    (``<<.LabelMatchers>>``) template variables are ignored.
    """
    names = set(_NAME_MATCHER.findall(expr))
    text = re.sub(r"<<[^>]*>>", "", expr)
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _IDENT.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue
        if word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


@pytest.fixture(scope="session")
def metric_names_in() -> Callable[[str], set[str]]:
    return promql_metric_names


def dashboard_exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) for every query in the dashboard, rows included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel.get("title", ""), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(board["panels"])
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            yield f"variable {variable['name']}", inner.group(1) if inner else query


@pytest.fixture(scope="session")
def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return list(dashboard_exprs(dashboard))
