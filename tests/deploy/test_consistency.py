"""The manifests agree with the runtime's contracts (worker/settings.py, worker/metrics.py).

Each check here is one that a plausible edit could break without any schema noticing: a drain
budget raised past the grace period, a probe on the wrong port, a ConfigMap key the worker never
reads, a secret pasted into a manifest, an autoscaler target at or above the worker's capacity.
The runtime's tables are read at test time, so a variable or metric added there is checked too.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import yaml

from ingress.settings import ENVIRONMENT as GATEWAY_ENVIRONMENT
from redisio.metrics import METRIC_NAMES
from worker.settings import ENVIRONMENT as WORKER_ENVIRONMENT

#: every variable any process role reads
ENVIRONMENT = {**WORKER_ENVIRONMENT, **GATEWAY_ENVIRONMENT}

GRACE_MARGIN_S = 5.0
ROLES = {"voicegrid-worker": "worker", "voicegrid-gateway": "gateway"}
SECRET_VARS = frozenset(n for n, (_, doc) in ENVIRONMENT.items() if doc.startswith("secret"))
# Shapes of real credentials, in case one is pasted into a manifest as a plain value.
CREDENTIAL_PATTERNS = (r"\bsk-[A-Za-z0-9_-]{16,}", r"\bAIza[0-9A-Za-z_-]{30,}")

Find = Callable[..., list[dict[str, Any]]]


def _voicegrid_deployments(objects: list[dict[str, Any]], find: Find) -> list[dict[str, Any]]:
    found = [d for d in find(objects, "Deployment") if d["metadata"]["name"] in ROLES]
    assert {d["metadata"]["name"] for d in found} == set(ROLES)
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per voicegrid pod"
    return containers[0]


def _config(objects: list[dict[str, Any]], find: Find, name: str) -> dict[str, str]:
    """The ConfigMap a container's envFrom names (kustomize has already put in the hash)."""
    [config_map] = find(objects, "ConfigMap", name)
    data: dict[str, str] = config_map.get("data", {})
    return data


def _environment(
    objects: list[dict[str, Any]], find: Find, container: dict[str, Any]
) -> dict[str, str]:
    """The plain (non-secret) environment a container starts with: ConfigMap, then env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_config(objects, find, source["configMapRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def _setting(env: dict[str, str], name: str) -> str:
    return env.get(name, ENVIRONMENT[name][0])


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    if len(command) == 1:
        command = shlex.split(command[0])
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    raise AssertionError(f"cannot tell how long preStop {hook} takes; use `sleep N`")


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"named port {port!r} is not declared by container {container['name']}"
    return int(by_name[port])


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and present and value in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


# --- draining ------------------------------------------------------------------------------------


def test_grace_period_covers_drain_and_pre_stop(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    for deployment in _voicegrid_deployments(objects, find_objects):
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        drain = float(
            _setting(_environment(objects, find_objects, container), "VOICEGRID_DRAIN_TIMEOUT_S")
        )
        needed = drain + _pre_stop_seconds(container) + GRACE_MARGIN_S
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= needed, (
            f"{deployment['metadata']['name']}: terminationGracePeriodSeconds={grace} but the "
            f"drain timeout {drain} s + preStop + {GRACE_MARGIN_S} s margin need {needed} s"
        )


def test_rollout_never_removes_a_worker_before_its_replacement_is_ready(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    for deployment in _voicegrid_deployments(objects, find_objects):
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] in (0, "0%")


# --- probes and ports ----------------------------------------------------------------------------


def test_probes_and_metrics_port_match_the_worker(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    probe_paths = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for deployment in _voicegrid_deployments(objects, find_objects):
        container = _container(deployment)
        port = int(
            _setting(_environment(objects, find_objects, container), "VOICEGRID_METRICS_PORT")
        )
        assert "livenessProbe" in container and "readinessProbe" in container
        for probe, path in probe_paths.items():
            if probe not in container:
                continue
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{probe} must ask {path}"
            assert _port_number(container, get["port"]) == port, f"{probe} port is not {port}"
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) == port
        assert _port_number(container, "metrics") == port


def test_gateway_serves_websocket_on_8080(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    [gateway] = find_objects(objects, "Deployment", "voicegrid-gateway")
    assert _port_number(_container(gateway), "websocket") == 8080
    [service] = find_objects(objects, "Service", "voicegrid-gateway")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["websocket"]["port"] == 8080


def test_services_reach_the_named_container_ports(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    for service in find_objects(objects, "Service"):
        selector = service["spec"]["selector"]
        backends = [
            d
            for d in find_objects(objects, "Deployment")
            if _selects({"matchLabels": selector}, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert backends, f"Service {service['metadata']['name']} selects no pod"
        for backend in backends:
            for port in service["spec"]["ports"]:
                _port_number(_container(backend), port["targetPort"])


# dev runs without the Prometheus Operator; keda scales with a ScaledObject instead of an HPA
OVERLAYS_WITH_SERVICE_MONITOR = frozenset({"prod", "keda", "cluster"})
OVERLAYS_WITH_HPA = frozenset({"prod", "cluster"})


def test_service_monitor_scrapes_worker_and_gateway_metrics(
    objects: list[dict[str, Any]], find_objects: Find, overlay: str
) -> None:
    monitors = find_objects(objects, "ServiceMonitor")
    if overlay not in OVERLAYS_WITH_SERVICE_MONITOR:
        assert not monitors, f"overlay {overlay} should not need the Prometheus Operator"
        return
    [monitor] = monitors
    services = [
        s
        for s in find_objects(objects, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    ]
    assert {s["metadata"]["name"] for s in services} == set(ROLES)
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in services:
            names = {p["name"] for p in service["spec"]["ports"]}
            assert endpoint["port"] in names, (
                f"{service['metadata']['name']} has no {endpoint['port']}"
            )


def test_disruption_budgets_select_their_deployment(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    budgets = find_objects(objects, "PodDisruptionBudget")
    for deployment in _voicegrid_deployments(objects, find_objects):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{deployment['metadata']['name']} needs exactly one PDB"


def test_workers_prefer_distinct_nodes(objects: list[dict[str, Any]], find_objects: Find) -> None:
    [worker] = find_objects(objects, "Deployment", "voicegrid-worker")
    pod = worker["spec"]["template"]
    terms = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and _selects(t["podAffinityTerm"]["labelSelector"], pod["metadata"]["labels"])
        for t in terms
    )


# --- configuration and secrets -------------------------------------------------------------------


def test_config_map_keys_are_known_non_secret_settings(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    for config_map in find_objects(objects, "ConfigMap"):
        keys = set(config_map.get("data", {}))
        assert keys <= set(ENVIRONMENT), f"unknown settings: {sorted(keys - set(ENVIRONMENT))}"
        assert not keys & SECRET_VARS, f"secrets in a ConfigMap: {sorted(keys & SECRET_VARS)}"
        assert "REDIS_URL" not in keys, "REDIS_URL carries the Redis password: use the Secret"


def test_containers_read_only_known_variables(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    for deployment in _voicegrid_deployments(objects, find_objects):
        names = {var["name"] for var in _container(deployment).get("env", [])}
        assert names <= set(ENVIRONMENT), f"unknown variables: {sorted(names - set(ENVIRONMENT))}"


def test_secrets_are_referenced_never_inlined(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    assert not find_objects(objects, "Secret"), "Secrets are created out of band, never rendered"
    for deployment in _voicegrid_deployments(objects, find_objects):
        for var in _container(deployment).get("env", []):
            if var["name"] in SECRET_VARS:
                assert "value" not in var, f"{var['name']} must come from a secretKeyRef"
                assert "secretKeyRef" in var["valueFrom"], var
            if var["name"] in ("REDIS_URL", "VOICEGRID_QUEUE_URL") and "value" in var:
                assert urlsplit(var["value"]).password is None, f"{var['name']} with a password"
    text = yaml.safe_dump_all(objects)
    for pattern in CREDENTIAL_PATTERNS:
        assert not re.search(pattern, text), f"something shaped like a credential: {pattern}"


def test_worker_gets_provider_keys_and_gateway_does_not(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    [worker] = find_objects(objects, "Deployment", "voicegrid-worker")
    [gateway] = find_objects(objects, "Deployment", "voicegrid-gateway")
    worker_env = {v["name"] for v in _container(worker).get("env", [])}
    gateway_env = {v["name"] for v in _container(gateway).get("env", [])}
    assert {"OPENAI_API_KEY", "GEMINI_API_KEY", "REDIS_URL"} <= worker_env
    assert "REDIS_URL" in gateway_env
    assert not gateway_env & {"OPENAI_API_KEY", "GEMINI_API_KEY"}


def test_cluster_overlay_gives_both_roles_the_queue_url_and_one_bucket_count(
    rendered: dict[str, list[dict[str, Any]]], find_objects: Find
) -> None:
    objects = rendered["cluster"]
    for deployment in _voicegrid_deployments(objects, find_objects):
        env = {v["name"]: v for v in _container(deployment).get("env", [])}
        for name, key in (("REDIS_URL", "url"), ("VOICEGRID_QUEUE_URL", "queue-url")):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("voicegrid-redis", key), (name, ref)
        # ingress and workers must agree on the bucket count: one ConfigMap for both
        plain = _environment(objects, find_objects, _container(deployment))
        assert plain.get("VOICEGRID_CLUSTER_BUCKETS") == "24"
    for overlay in ("dev", "prod", "keda"):
        for deployment in _voicegrid_deployments(rendered[overlay], find_objects):
            names = {v["name"] for v in _container(deployment).get("env", [])}
            assert "VOICEGRID_QUEUE_URL" not in names, f"{overlay}: one Redis, no queue URL"


def test_same_image_and_entrypoint_for_both_roles(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    deployments = _voicegrid_deployments(objects, find_objects)
    images = {_container(d)["image"] for d in deployments}
    assert len(images) == 1, images
    for deployment in deployments:
        container = _container(deployment)
        assert "command" not in container, "the image's ENTRYPOINT (voicegrid) must be kept"
        assert container["args"][0] == ROLES[deployment["metadata"]["name"]]


def test_prod_pins_an_image_tag(
    rendered: dict[str, list[dict[str, Any]]], find_objects: Find
) -> None:
    for overlay in ("prod", "keda", "cluster"):
        for deployment in _voicegrid_deployments(rendered[overlay], find_objects):
            image = _container(deployment)["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" in name, f"{overlay}: {image} is not a registry image"
            assert tag and tag != "latest", f"{overlay}: {image} must pin a release tag"


def test_pods_run_unprivileged(objects: list[dict[str, Any]], find_objects: Find) -> None:
    for deployment in find_objects(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_worker_resources_fit_its_session_capacity(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    # Base sizing is for 100 sessions per pod; an overlay that lowers the capacity may shrink
    # the requests, one that raises it must grow them: 1 MiB per session on top of a 150 MiB base.
    [worker] = find_objects(objects, "Deployment", "voicegrid-worker")
    container = _container(worker)
    sessions = int(
        _setting(_environment(objects, find_objects, container), "VOICEGRID_MAX_SESSIONS")
    )
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    assert int(limit[:-2]) >= 150 + sessions, f"{limit} is too little for {sessions} sessions"
    assert "cpu" not in container["resources"].get("limits", {}), "a CPU limit throttles audio"


# --- autoscaling ---------------------------------------------------------------------------------


def _max_sessions(objects: list[dict[str, Any]], find: Find) -> int:
    [worker] = find(objects, "Deployment", "voicegrid-worker")
    env = _environment(objects, find, _container(worker))
    return int(_setting(env, "VOICEGRID_MAX_SESSIONS"))


def test_hpa_scales_the_worker_on_an_adapter_metric_below_capacity(
    overlay: str,
    objects: list[dict[str, Any]],
    find_objects: Find,
    adapter_config: dict[str, Any],
    metric_names_in: Callable[[str], set[str]],
) -> None:
    hpas = find_objects(objects, "HorizontalPodAutoscaler")
    if overlay not in OVERLAYS_WITH_HPA:
        # two autoscalers on one Deployment would fight each other
        assert not hpas, f"overlay {overlay} must not carry an HPA"
        return
    [hpa] = hpas
    assert hpa["spec"]["scaleTargetRef"]["name"] == "voicegrid-worker"
    assert find_objects(objects, "Deployment", "voicegrid-worker")
    exported = {rule["name"]["as"] for rule in adapter_config["rules"]}
    capacity = _max_sessions(objects, find_objects)
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] in exported, "no adapter rule serves this metric"
        target = float(metric["pods"]["target"]["averageValue"])
        assert 0 < target < capacity, f"target {target} must stay below the capacity {capacity}"
    assert hpa["spec"]["minReplicas"] >= 2, "one worker cannot take over another's sessions"


def test_adapter_rules_read_worker_metrics(
    adapter_config: dict[str, Any], metric_names_in: Callable[[str], set[str]]
) -> None:
    for rule in adapter_config["rules"]:
        series = metric_names_in(rule["seriesQuery"])
        assert series and series <= METRIC_NAMES, series
        used = metric_names_in(rule["metricsQuery"].replace("<<.Series>>", next(iter(series))))
        assert used and used <= METRIC_NAMES, used
        assert re.fullmatch(rule["name"]["matches"], next(iter(series)))
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_keda_scales_the_worker_on_sessions_below_capacity(
    rendered: dict[str, list[dict[str, Any]]],
    find_objects: Find,
    metric_names_in: Callable[[str], set[str]],
) -> None:
    objects = rendered["keda"]
    [scaled] = find_objects(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "voicegrid-worker"
    namespace = scaled["metadata"]["namespace"]
    capacity = _max_sessions(objects, find_objects)
    for trigger in scaled["spec"]["triggers"]:
        query = trigger["metadata"]["query"]
        names = metric_names_in(query)
        assert names and names <= METRIC_NAMES, names
        assert f'namespace="{namespace}"' in query, "the query must count this namespace only"
        assert 0 < float(trigger["metadata"]["threshold"]) < capacity
    assert scaled["spec"]["minReplicaCount"] >= 2


# --- network policy ------------------------------------------------------------------------------


def _policy_for(
    objects: list[dict[str, Any]], find: Find, deployment: dict[str, Any]
) -> dict[str, Any]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in find(objects, "NetworkPolicy")
        if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels)
    ]
    assert len(policies) == 1, f"{deployment['metadata']['name']} needs one role policy"
    return policies[0]


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_network_policies_allow_only_what_each_role_needs(
    objects: list[dict[str, Any]], find_objects: Find
) -> None:
    deny = [p for p in find_objects(objects, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for deployment in _voicegrid_deployments(objects, find_objects):
        policy = _policy_for(objects, find_objects, deployment)
        ports = _egress_ports(policy)
        role = ROLES[deployment["metadata"]["name"]]
        expected = {53, 6379} | ({443} if role == "worker" else set())
        assert expected <= ports and ports <= expected | {6380}, f"{role} egress ports {ports}"
        for rule in policy["spec"]["egress"]:
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if block and block["cidr"] in ("0.0.0.0/0", "::/0"):
                    assert {p["port"] for p in rule["ports"]} == {443}, "open egress beyond HTTPS"
                    assert block.get("except"), "public egress must exclude private ranges"
        metrics = [
            rule
            for rule in policy["spec"]["ingress"]
            for p in rule["ports"]
            if p["port"] == "metrics"
        ]
        assert metrics and all(rule.get("from") for rule in metrics), "metrics open to everyone"


def test_dev_redis_is_reachable_by_the_url_and_the_policies(
    rendered: dict[str, list[dict[str, Any]]], find_objects: Find
) -> None:
    objects = rendered["dev"]
    [redis] = find_objects(objects, "Deployment", "voicegrid-redis")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    for deployment in _voicegrid_deployments(objects, find_objects):
        url = next(v["value"] for v in _container(deployment)["env"] if v["name"] == "REDIS_URL")
        parts = urlsplit(url)
        [service] = find_objects(objects, "Service", parts.hostname)
        assert parts.port in {p["port"] for p in service["spec"]["ports"]}
        policy = _policy_for(objects, find_objects, deployment)
        assert any(
            _selects(peer["podSelector"], redis_labels)
            and parts.port in {p["port"] for p in rule["ports"]}
            for rule in policy["spec"]["egress"]
            for peer in rule.get("to", [])
            if "podSelector" in peer and "namespaceSelector" not in peer
        ), f"{deployment['metadata']['name']} may not reach Redis"
        [redis_policy] = [
            p
            for p in find_objects(objects, "NetworkPolicy")
            if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], redis_labels)
        ]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(
            _selects(peer["podSelector"], pod_labels)
            for rule in redis_policy["spec"]["ingress"]
            for peer in rule["from"]
        ), f"Redis does not admit {deployment['metadata']['name']}"


# --- Prometheus Operator copy of the rules -------------------------------------------------------


def test_prometheus_rule_resource_matches_the_rule_file(
    rendered: dict[str, list[dict[str, Any]]], find_objects: Find, rule_groups: list[dict[str, Any]]
) -> None:
    [resource] = find_objects(rendered["prod"], "PrometheusRule")
    assert resource["spec"]["groups"] == rule_groups, (
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/voicegrid-rules.yml: "
        "copy the rule file's groups under spec: (indented by two spaces)"
    )
