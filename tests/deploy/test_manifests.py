"""Every overlay renders with kustomize and every object it renders is valid.

Core Kubernetes kinds are checked by kubernetes-validate in strict mode (unknown fields rejected)
against a pinned Kubernetes version; the CRD objects (ServiceMonitor, PrometheusRule,
ScaledObject) against JSON Schemas written from their projects' documented CRD fields, in
``tests/deploy/schemas/``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.32.0"
SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh-v1alpha1.json",
}
# What each overlay must contain, so that a kustomize patch that deletes or drops an object
# (or an overlay that stops including one) is caught.
EXPECTED_KINDS: dict[str, set[str]] = {
    "dev": {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    },
    "prod": {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    },
    "keda": {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ScaledObject",
        "ServiceMonitor",
        "PrometheusRule",
    },
}
# cluster: prod with the session streams on a Redis Cluster and the queue on its own Redis
EXPECTED_KINDS["cluster"] = EXPECTED_KINDS["prod"]
ABSENT_KINDS = {
    # dev runs without cluster add-ons: no adapter, no Prometheus Operator CRDs.
    "dev": {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ScaledObject"},
    "prod": {"ScaledObject"},
    "cluster": {"ScaledObject"},
    # KEDA owns its own HPA; a second one on the same Deployment would fight it.
    "keda": {"HorizontalPodAutoscaler"},
}


def _load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return schema


_COMMON = _load("_common.json")
_REGISTRY: Registry[Any] = Registry().with_resource(_COMMON["$id"], Resource.from_contents(_COMMON))


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = _load(CRD_SCHEMAS[(api_version, kind)])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_REGISTRY)


def validate_object(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not a valid object of its kind (CRD schema or Kubernetes schema)."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _describe(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def test_overlay_renders_expected_kinds(objects: list[dict[str, Any]], overlay: str) -> None:
    kinds = {o["kind"] for o in objects}
    assert EXPECTED_KINDS[overlay] <= kinds, f"{overlay} lacks {EXPECTED_KINDS[overlay] - kinds}"
    assert not kinds & ABSENT_KINDS[overlay], (
        f"{overlay} must not render {kinds & ABSENT_KINDS[overlay]}"
    )


def test_every_object_is_valid(objects: list[dict[str, Any]], overlay: str) -> None:
    failures: list[str] = []
    for obj in objects:
        try:
            validate_object(obj)
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{_describe(obj)}: no schema ({exc.message}); add a CRD schema")
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            failures.append(f"{_describe(obj)} at {path}: {exc.message}")
    assert not failures, f"{overlay}:\n" + "\n".join(failures)


def test_every_object_is_namespaced_in_voicegrid(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "voicegrid"
        else:
            assert obj["metadata"].get("namespace") == "voicegrid", _describe(obj)


def test_names_are_unique_per_kind(objects: list[dict[str, Any]]) -> None:
    seen = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(seen) == len(set(seen))


# The validators must reject what the real API server would reject; otherwise the test above
# proves nothing. One broken object per kind we render.


def _deployment(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return next(o for o in rendered["prod"] if o["kind"] == "Deployment")


def test_strict_validation_rejects_an_unknown_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    broken = copy.deepcopy(_deployment(rendered))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(broken)


def test_validation_rejects_a_wrong_type(rendered: dict[str, list[dict[str, Any]]]) -> None:
    broken = copy.deepcopy(_deployment(rendered))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30s"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(broken)


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        # A typo in an endpoint field, and a duration Prometheus cannot parse.
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(ports="metrics")),
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval="15 sec")),
        # A rule that is both a recording and an alerting rule; a recording rule with `for`.
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(alert="X")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "5m"})),
        # KEDA trigger metadata is map[string]string: an unquoted number is rejected.
        ("ScaledObject", lambda o: o["spec"]["triggers"][0]["metadata"].update(threshold=70)),
        ("ScaledObject", lambda o: o["spec"]["triggers"][0]["metadata"].pop("query")),
        ("ScaledObject", lambda o: o["spec"].update(maxReplicas=50)),
    ],
)
def test_crd_schemas_reject_broken_objects(
    rendered: dict[str, list[dict[str, Any]]], kind: str, mutate: Any
) -> None:
    original = next(o for o in rendered["keda"] if o["kind"] == kind)
    validate_object(original)
    broken = copy.deepcopy(original)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_object(broken)
