"""Reading metrics: from a Prometheus text exposition (a process's ``/metrics``) or from this
process's ``redisio.metrics.REGISTRY`` (in-process workers and gateways)."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from redisio.metrics import REGISTRY

__all__ = ["registry_value", "sample_value", "series_names"]

_SERIES = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{| )", re.MULTILINE)


def series_names(exposition: str) -> set[str]:
    """Every series name in an exposition (``_total``, ``_bucket``, ... included)."""
    return set(_SERIES.findall(exposition))


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` in an exposition; 0 when there is none."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def registry_value(name: str, **labels: str) -> float:
    """The sample ``name`` with ``labels`` in this process's registry; 0 when there is none."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
