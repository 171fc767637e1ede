"""The autoscalers and the alert follow the worker's event-loop lag budget.

The HPA (prod) and the KEDA ScaledObject scale on the lag with a target of half the budget the
worker is configured with (``VOICEGRID_MAX_LOOP_LAG_S``: the lag below which an overloaded worker
admits again), so changing the budget without the targets fails here. The overload alert compares
the lag with the budget the worker exports, so it needs no threshold of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from worker.settings import ENVIRONMENT

LAG = "voicegrid_event_loop_lag_seconds"
BUDGET = "voicegrid_event_loop_lag_budget_seconds"

Find = Callable[..., list[dict[str, Any]]]


def _worker_budget(objects: list[dict[str, Any]], find: Find) -> float:
    [worker] = find(objects, "Deployment", "voicegrid-worker")
    [container] = worker["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        [config_map] = find(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map.get("data", {}))
    env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    name = "VOICEGRID_MAX_LOOP_LAG_S"
    return float(env.get(name, ENVIRONMENT[name][0]))


def test_the_hpa_scales_on_loop_lag_at_half_the_budget(
    rendered: dict[str, list[dict[str, Any]]], find_objects: Find
) -> None:
    objects = rendered["prod"]
    [hpa] = find_objects(objects, "HorizontalPodAutoscaler")
    targets = {
        m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"])
        for m in hpa["spec"]["metrics"]
    }
    assert "voicegrid_sessions_active" in targets, "sessions per pod stays the first signal"
    assert targets[LAG] == pytest.approx(_worker_budget(objects, find_objects) / 2)


def test_keda_scales_on_loop_lag_at_half_the_budget(
    rendered: dict[str, list[dict[str, Any]]],
    find_objects: Find,
    metric_names_in: Callable[[str], set[str]],
) -> None:
    objects = rendered["keda"]
    [scaled] = find_objects(objects, "ScaledObject")
    lag = [t for t in scaled["spec"]["triggers"] if LAG in metric_names_in(t["metadata"]["query"])]
    assert len(lag) == 1, "one trigger on the event-loop lag"
    threshold = float(lag[0]["metadata"]["threshold"])
    assert threshold == pytest.approx(_worker_budget(objects, find_objects) / 2)


def test_the_overload_alert_follows_the_configured_budget(
    rules: list[dict[str, Any]], metric_names_in: Callable[[str], set[str]]
) -> None:
    [alert] = [r for r in rules if r.get("alert") == "VoicegridWorkerOverloaded"]
    assert metric_names_in(alert["expr"]) == {LAG, BUDGET}
    assert alert["for"] == "5m"
