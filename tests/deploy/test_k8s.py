"""The Kubernetes manifests (deploy/k8s, docs/SCALING.md) render offline with ``kubectl
kustomize``, every core object is valid against the Kubernetes 1.30 schemas (strict: no unknown
field), the KEDA objects use only what KEDA's ScaledObject specification documents, and the
manifests carry the reference deployment's scaling rules and the pod hardening. The PromQL the
scalers run is evaluated by promtool on sample series.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
RENDERS = ["", "overlays/example", "overlays/example-keda"]  # "": `kubectl kustomize deploy/k8s`
# Custom resources, checked by the KEDA tests below (and the ServiceMonitor's own test): every
# other object must be a core one the schemas know.
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


@functools.cache
def kubectl() -> str:
    """kubectl with a kustomize of v5 or later built in (components, ``labels``)."""
    path = shutil.which("kubectl")
    require_service("kubectl", path is not None, "a kubectl with kustomize v5+ on PATH")
    assert path is not None
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    version = json.loads(out).get("kustomizeVersion", "v0")
    found = re.match(r"v?(\d+)", version)
    major = int(found.group(1)) if found else 0
    require_service("kubectl's kustomize v5+", major >= 5, f"{path} has kustomize {version}")
    return path


@functools.cache
def _render(directory: str) -> tuple[str, ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(yaml.safe_dump(doc) for doc in yaml.safe_load_all(out) if doc)


def render(directory: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize deploy/k8s/<directory>`` prints (fresh copies)."""
    return [yaml.safe_load(text) for text in _render(directory)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def deployments(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] == "Deployment")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config(objects: list[dict[str, Any]]) -> dict[str, str]:
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    data: dict[str, str] = configmap["data"]
    return data


# --- rendering and schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("directory", RENDERS)
def test_the_base_and_the_overlays_render_offline(directory: str) -> None:
    kinds = {o["kind"] for o in render(directory)}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds


@pytest.mark.parametrize("directory", RENDERS)
def test_every_core_object_is_valid_against_the_kubernetes_schemas_strictly(
    directory: str,
) -> None:
    core = [o for o in render(directory) if (o["apiVersion"], o["kind"]) not in CUSTOM]
    assert len(core) >= 10
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    serve = one(render(""), "Deployment", "breakwater-serve")
    container(serve)["livenesProbe"] = container(serve).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(serve, KUBERNETES_VERSION, strict=True)


def test_the_base_holds_no_secret_and_the_example_only_placeholders() -> None:
    assert [o for o in render("") if o["kind"] == "Secret"] == []
    secrets = [o for o in render("overlays/example") if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "breakwater-secrets",
        "breakwater-provider-keys",
    }
    for secret in secrets:
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            assert "REPLACE-ME" in value or ".example.internal" in value, key


# --- the reference deployment's rules --------------------------------------------------------------


def test_the_serve_hpa_carries_the_reference_rule() -> None:
    hpa = one(render(""), "HorizontalPodAutoscaler", "breakwater-serve")
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "breakwater-serve",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 10)
    by_type = {m["type"]: m for m in spec["metrics"]}
    assert by_type["Resource"]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 80},
    }
    assert by_type["External"]["external"] == {
        "metric": {"name": "agent_request_latency_seconds_avg"},
        "target": {"type": "Value", "value": "2"},
    }
    assert_doubling_and_halving(spec["behavior"])


def assert_doubling_and_halving(behavior: dict[str, Any]) -> None:
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["policies"] == [{"type": "Percent", "value": 100, "periodSeconds": 60}]
    assert down["policies"] == [{"type": "Percent", "value": 50, "periodSeconds": 60}]
    assert up["stabilizationWindowSeconds"] == 0
    assert down["stabilizationWindowSeconds"] == 300
    assert up["selectPolicy"] == down["selectPolicy"] == "Max"


def test_the_adapter_metric_is_the_one_docs_scaling_defines() -> None:
    hpa = one(render(""), "HorizontalPodAutoscaler", "breakwater-serve")
    (external,) = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    scaling = (ROOT / "docs" / "SCALING.md").read_text()
    assert f"as: {external['metric']['name']}" in scaling
    assert "rate(agent_request_duration_seconds_sum" in scaling
    assert "rate(agent_request_duration_seconds_count" in scaling


def test_the_workers_scale_on_the_queue_their_executions_are_sent_to() -> None:
    objects = render("overlays/example")
    scaled = one(objects, "ScaledObject", "breakwater-worker")["spec"]
    (trigger,) = scaled["triggers"]
    queue = config(objects)["BREAKWATER_EXECUTION_QUEUE"]
    command = container(one(objects, "Deployment", "breakwater-worker"))["command"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == queue == option(command, "--queues")
    assert scaled["scaleTargetRef"]["name"] == "breakwater-worker"
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 10)
    assert_doubling_and_halving(scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"])


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# --- per-agent pools --------------------------------------------------------------------------------


def queues_consumed(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Worker Deployment -> the Celery queues its ``--queues`` names."""
    return {
        d["metadata"]["name"]: set(option(container(d)["command"], "--queues").split(","))
        for d in deployments(objects)
        if container(d)["command"][:4] == ["celery", "-A", "console", "worker"]
    }


@pytest.mark.parametrize("directory", ["overlays/example", "overlays/example-keda"])
def test_the_heavy_pool_scales_on_the_redis_list_of_the_queue_it_alone_consumes(
    directory: str,
) -> None:
    objects = render(directory)
    consumed = queues_consumed(objects)
    assert consumed == {"breakwater-worker": {"celery"}, "breakwater-worker-heavy": {"heavy"}}
    scaled = one(objects, "ScaledObject", "breakwater-worker-heavy")["spec"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    # kombu keeps a queue's waiting messages in the Redis list named after it
    # (tests/agents/executions/test_pools.py reads them there).
    assert trigger["metadata"]["listName"] == "heavy"
    assert scaled["scaleTargetRef"]["name"] == "breakwater-worker-heavy"
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 10)
    assert_doubling_and_halving(scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"])
    default = one(objects, "ScaledObject", "breakwater-worker")["spec"]["triggers"][0]
    assert default["authenticationRef"] == trigger["authenticationRef"]
    assert default["metadata"]["databaseIndex"] == trigger["metadata"]["databaseIndex"]


def test_the_heavy_pools_pod_is_the_default_workers_but_for_its_queue_and_labels() -> None:
    objects = render("overlays/example")
    pods = {
        name: one(objects, "Deployment", name)["spec"]["template"]
        for name in ("breakwater-worker", "breakwater-worker-heavy")
    }
    for pod in pods.values():
        main = pod["spec"]["containers"][0]
        main["command"] = [a for a in main["command"] if a not in {"celery", "heavy", "heavy@%h"}]
        main["command"] = [a for a in main["command"] if a != "--hostname"]
        del pod["metadata"]["labels"]["app.kubernetes.io/component"]
    assert pods["breakwater-worker"] == pods["breakwater-worker-heavy"]


def test_every_queue_of_the_demo_agents_has_a_worker_in_the_example() -> None:
    from agents.config.apply import config_parse

    objects = render("overlays/example")
    default = config(objects)["BREAKWATER_EXECUTION_QUEUE"]
    demo = config_parse((ROOT / "demo" / "breakwater.yaml").read_text())
    wanted = {default if a.queue == "default" else a.queue for a in demo.agents}
    assert wanted == {"celery", "heavy"}  # the demo's data-analyst has a pool of its own
    assert wanted <= set().union(*queues_consumed(objects).values())


def test_the_keda_overlay_scales_serve_by_the_exact_rule_instead_of_the_hpa() -> None:
    objects = render("overlays/example-keda")
    assert [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"] == []
    spec = one(objects, "ScaledObject", "breakwater-serve")["spec"]
    assert spec["scaleTargetRef"]["name"] == "breakwater-serve"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    assert_doubling_and_halving(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"])
    modifiers = spec["advanced"]["scalingModifiers"]
    assert (modifiers["target"], modifiers["metricType"]) == ("1", "Value")
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"latency", "cpu"}
    assert all(t["type"] == "prometheus" for t in triggers.values())
    assert "agent_request_duration_seconds_sum" in triggers["latency"]["metadata"]["query"]
    # The formula, read as Python, gives the rule: x2 past either upper threshold, x0.5 under
    # both lower ones, x1 in between (the thresholds themselves hold).
    rule = formula(modifiers["formula"])
    assert rule(latency=2.5, cpu=10) == 2
    assert rule(latency=0.1, cpu=85) == 2
    assert rule(latency=0.4, cpu=29) == 0.5
    assert rule(latency=0.4, cpu=50) == 1
    assert rule(latency=1.0, cpu=20) == 1
    assert rule(latency=2.0, cpu=80) == 1
    assert rule(latency=0.5, cpu=10) == 1


def formula(expression: str) -> Any:
    """A KEDA (expr-lang) formula of comparisons, ``||``, ``&&``, ``a ? b : c`` and parentheses,
    as a Python function of its variables."""

    def python(text: str) -> str:
        text = text.strip()
        while text.startswith("(") and _closing(text, 0) == len(text) - 1:
            text = text[1:-1].strip()
        question = _top_level(text, "?")
        if question is None:
            return text.replace("||", " or ").replace("&&", " and ")
        colon = _matching_colon(text, question)
        condition, then, otherwise = text[:question], text[question + 1 : colon], text[colon + 1 :]
        return f"(({python(then)}) if ({python(condition)}) else ({python(otherwise)}))"

    code = compile(python(expression), "<formula>", "eval")
    return lambda **values: eval(code, {"__builtins__": {}}, values)  # noqa: S307 - our own file


def _closing(text: str, start: int) -> int:
    depth = 0
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _top_level(text: str, char: str) -> int | None:
    depth = 0
    for index, c in enumerate(text):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0 and c == char:
            return index
    return None


def _matching_colon(text: str, question: int) -> int:
    depth = pending = 0
    for index in range(question + 1, len(text)):
        c = text[index]
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0 and c == "?":
            pending += 1
        elif depth == 0 and c == ":":
            if pending == 0:
                return index
            pending -= 1
    raise ValueError(f"no ':' for the '?' in {text!r}")


def test_the_formula_reader_fails_on_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="no ':'"):
        formula("a ? 1")


# --- KEDA objects against KEDA's documented specification ----------------------------------------
# From KEDA's ScaledObject specification (keda.sh/docs/2.15/reference/scaledobject-spec) and its
# Redis Lists and Prometheus scaler pages: KEDA's CRDs are not in the Kubernetes schemas.

SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
SCALING_MODIFIERS = {"target", "activationTarget", "metricType", "formula"}
TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
METRIC_TYPES = {"AverageValue", "Value"}  # Utilization is for the cpu and memory scalers only
SCALERS: dict[str, tuple[set[str], set[str]]] = {  # type: (required, optional) metadata
    "redis": (
        {"listName", "listLength"},
        {
            "address",
            "host",
            "port",
            "usernameFromEnv",
            "passwordFromEnv",
            "activationListLength",
            "enableTLS",
            "unsafeSsl",
            "databaseIndex",
            "addressFromEnv",
            "hostFromEnv",
            "portFromEnv",
        },
    ),
    "prometheus": (
        {"serverAddress", "query", "threshold"},
        {
            "queryParameters",
            "activationThreshold",
            "namespace",
            "customHeaders",
            "ignoreNullValues",
            "unsafeSsl",
            "authModes",
        },
    ),
}
# TriggerAuthentication parameters each scaler takes (its "Authentication Parameters").
AUTH_PARAMETERS = {
    "redis": {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key"},
}


def keda_objects(directory: str, kind: str) -> list[dict[str, Any]]:
    return [
        o for o in render(directory) if (o["apiVersion"], o["kind"]) == ("keda.sh/v1alpha1", kind)
    ]


@pytest.mark.parametrize("directory", RENDERS)
def test_scaled_objects_use_only_the_documented_fields(directory: str) -> None:
    objects = render(directory)
    scaled_objects = keda_objects(directory, "ScaledObject")
    assert scaled_objects
    auths = {a["metadata"]["name"]: a for a in keda_objects(directory, "TriggerAuthentication")}
    targets = {d["metadata"]["name"] for d in deployments(objects)}
    for scaled in scaled_objects:
        assert set(scaled) == {"apiVersion", "kind", "metadata"} | {"spec"}
        spec = scaled["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC
        assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
        assert spec["scaleTargetRef"]["name"] in targets
        for field in ("pollingInterval", "minReplicaCount", "maxReplicaCount"):
            assert isinstance(spec[field], int)
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        advanced = spec.get("advanced", {})
        assert set(advanced) <= ADVANCED
        assert set(advanced.get("horizontalPodAutoscalerConfig", {})) <= HPA_CONFIG
        behavior = advanced.get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:  # KEDA hands it to its HPA as is: the HPA schema judges it
            kubernetes_validate.validate(hpa_with(behavior), KUBERNETES_VERSION, strict=True)
        names = [t.get("name") for t in spec["triggers"]]
        if "scalingModifiers" in advanced:
            modifiers = advanced["scalingModifiers"]
            assert set(modifiers) <= SCALING_MODIFIERS
            assert {"target", "formula"} <= set(modifiers)
            assert modifiers.get("metricType", "AverageValue") in METRIC_TYPES
            assert all(names), "with scalingModifiers every trigger needs a name"
            used = set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"]))
            assert used <= set(names), f"formula names unknown triggers: {used - set(names)}"
        assert len(set(names)) == len(names)
        for trigger in spec["triggers"]:
            check_trigger(trigger, auths)


def check_trigger(trigger: dict[str, Any], auths: dict[str, dict[str, Any]]) -> None:
    assert set(trigger) <= TRIGGER
    assert trigger.get("metricType", "AverageValue") in METRIC_TYPES
    required, optional = SCALERS[trigger["type"]]
    metadata = trigger["metadata"]
    assert required <= set(metadata), f"{trigger['type']}: missing {required - set(metadata)}"
    assert set(metadata) <= required | optional, set(metadata) - required - optional
    # The CRD declares metadata as map[string]string: a YAML number is refused.
    numbers = {key: value for key, value in metadata.items() if not isinstance(value, str)}
    assert not numbers, f"metadata is map[string]string, not {numbers}"
    for number in ("listLength", "threshold", "databaseIndex", "activationThreshold"):
        if number in metadata:
            float(metadata[number])
    if "authenticationRef" in trigger:
        auth = auths[trigger["authenticationRef"]["name"]]
        assert set(auth["spec"]) == {"secretTargetRef"}
        for ref in auth["spec"]["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
            assert ref["parameter"] in AUTH_PARAMETERS[trigger["type"]]
    if trigger["type"] == "redis":  # where Redis is: in the metadata or the authentication
        where = set(metadata) | {
            ref["parameter"]
            for ref in auths.get(trigger.get("authenticationRef", {}).get("name", ""), {})
            .get("spec", {})
            .get("secretTargetRef", [])
        }
        assert where & {"address", "addressFromEnv", "host", "hostFromEnv"}


def hpa_with(behavior: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "behavior-check"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 10,
            "behavior": behavior,
        },
    }


def test_the_spec_check_refuses_a_number_in_trigger_metadata() -> None:
    (trigger,) = keda_objects("", "ScaledObject")[0]["spec"]["triggers"]
    auths = {a["metadata"]["name"]: a for a in keda_objects("", "TriggerAuthentication")}
    check_trigger(trigger, auths)
    trigger["metadata"]["listLength"] = 8
    with pytest.raises(AssertionError, match=re.escape("map[string]string")):
        check_trigger(trigger, auths)


def test_the_spec_check_refuses_an_undocumented_scaler_parameter() -> None:
    (trigger,) = keda_objects("", "ScaledObject")[0]["spec"]["triggers"]
    auths = {a["metadata"]["name"]: a for a in keda_objects("", "TriggerAuthentication")}
    trigger["metadata"]["queueName"] = "celery"  # RabbitMQ's parameter, not Redis's
    with pytest.raises(AssertionError, match="queueName"):
        check_trigger(trigger, auths)


def test_the_keda_secrets_the_overlay_references_exist_in_its_secret() -> None:
    objects = render("overlays/example")
    secret = one(objects, "Secret", "breakwater-secrets")
    for auth in keda_objects("overlays/example", "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "breakwater-secrets"
            assert ref["key"] in secret["data"]


def test_keda_watches_the_redis_the_example_processes_use() -> None:
    objects = render("overlays/example")
    data = {
        key: base64.b64decode(value).decode()
        for key, value in one(objects, "Secret", "breakwater-secrets")["data"].items()
    }
    redis_url = urlsplit(data["REDIS_URL"])
    (trigger,) = one(objects, "ScaledObject", "breakwater-worker")["spec"]["triggers"]
    assert data["keda-redis-address"] == f"{redis_url.hostname}:{redis_url.port}"
    assert trigger["metadata"]["databaseIndex"] == (redis_url.path.strip("/") or "0")
    assert data["keda-redis-password"] == redis_url.password


def test_the_service_monitor_scrapes_serve_metrics() -> None:
    objects = render("overlays/example")
    monitor = one(objects, "ServiceMonitor", "breakwater-serve")
    service = one(objects, "Service", "breakwater-serve")
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# --- processes, probes, shutdown ------------------------------------------------------------------


def test_each_process_runs_its_command() -> None:
    objects = render("")
    commands = {
        d["metadata"]["name"].removeprefix("breakwater-"): container(d)["command"]
        for d in deployments(objects)
    }
    assert set(commands) == {"serve", "worker", "beat", "drain-records"}
    assert commands["serve"][:3] == ["python", "manage.py", "serve"]
    assert option(commands["serve"], "--host") == "0.0.0.0"  # noqa: S104 - a pod's address
    assert commands["worker"][:4] == ["celery", "-A", "console", "worker"]
    assert commands["beat"][:4] == ["celery", "-A", "console", "beat"]
    assert option(commands["beat"], "--schedule").startswith(
        config(objects)["BREAKWATER_VAR_DIR"] + "/"
    )
    assert commands["drain-records"] == ["python", "manage.py", "drain_records"]
    # drain_records runs on its own: serve must not drain as well.
    assert config(objects)["BREAKWATER_SERVE_DRAINS"] == "0"


def test_beat_is_a_singleton_and_the_scaled_deployments_leave_replicas_to_their_scaler() -> None:
    objects = render("")
    beat = one(objects, "Deployment", "breakwater-beat")["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}
    for name in ("breakwater-serve", "breakwater-worker"):
        assert "replicas" not in one(objects, "Deployment", name)["spec"]


def test_serve_probes_health_and_readiness_and_drains_before_it_stops() -> None:
    serve = one(render(""), "Deployment", "breakwater-serve")
    main = container(serve)
    port = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert option(main["command"], "--port") == str(port["http"])
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5
    source = (ROOT / "console" / "management" / "commands" / "serve.py").read_text()
    (graceful,) = re.findall(r"timeout_graceful_shutdown=(\d+)", source)
    grace = serve["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + int(graceful) + 10, "room for the final settle and journal writes"


def test_probes_and_scrapes_by_pod_address_pass_the_allowed_hosts_check() -> None:
    for directory in RENDERS:
        env = container(one(render(directory), "Deployment", "breakwater-serve"))["env"]
        by_name = {e["name"]: e for e in env}
        assert by_name["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert "$(POD_IP)" in by_name["ALLOWED_HOSTS"]["value"].split(",")


@pytest.mark.parametrize("directory", RENDERS)
def test_a_variable_reference_names_a_variable_defined_before_it(directory: str) -> None:
    """Kubernetes expands $(NAME) only from variables earlier in the list."""
    for deployment in deployments(render(directory)):
        defined: set[str] = set()
        for entry in container(deployment)["env"]:
            for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", entry.get("value", "")):
                assert name in defined, f"{deployment['metadata']['name']}: $({name})"
            defined.add(entry["name"])


# --- pods: hardening, resources, writable paths -----------------------------------------------------


@pytest.mark.parametrize("directory", RENDERS)
def test_every_pod_runs_as_non_root_read_only_without_capabilities(directory: str) -> None:
    for deployment in deployments(render(directory)):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        main = container(deployment)
        assert main["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        for kind in ("requests", "limits"):
            assert set(main["resources"][kind]) == {"cpu", "memory"}


@pytest.mark.parametrize("directory", RENDERS)
def test_what_the_processes_write_is_on_an_empty_dir(directory: str) -> None:
    objects = render(directory)
    var_dir = config(objects)["BREAKWATER_VAR_DIR"]
    for deployment in deployments(objects):
        pod = deployment["spec"]["template"]["spec"]
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        assert mounts[var_dir] in empty
        assert mounts["/tmp"] in empty


@pytest.mark.parametrize("directory", RENDERS)
def test_every_selector_matches_the_pods_it_means(directory: str) -> None:
    objects = render(directory)
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in deployments(objects)
    }
    for deployment in deployments(objects):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods[deployment["metadata"]["name"]].items()
    for obj in objects:
        if obj["kind"] == "Service":
            selector = obj["spec"]["selector"]
        elif obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"]["selector"]["matchLabels"]
        else:
            continue
        matched = [name for name, labels in pods.items() if selector.items() <= labels.items()]
        assert matched == [obj["metadata"]["name"]], (obj["kind"], selector, matched)


def test_the_example_has_the_network_policies_and_its_pods_meet_restricted_security() -> None:
    objects = render("overlays/example")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in policies
    } == {"breakwater"}
    namespace = one(objects, "Namespace", "breakwater")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "breakwater"
    }


# --- configuration: only variables the application reads --------------------------------------------

# Variables the pods set for Kubernetes' own use, never read by the application: each must be
# used in another variable of the same container ($(POD_IP) in ALLOWED_HOSTS).
KUBERNETES_ONLY = {"POD_IP"}
_READERS = re.compile(
    r"""(?:env_(?:str|bool|int|float|list|url)\(\s*|os\.environ\.get\(\s*|_ENV\s*=\s*)"([A-Z][A-Z0-9_]*)\""""
)


@functools.cache
def variables_the_application_reads() -> frozenset[str]:
    names: set[str] = set()
    for package in ("console", "core", "agents", "budgets", "incidents"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(_READERS.findall(path.read_text()))
    return frozenset(names)


def test_the_reader_scan_finds_the_variables_it_should() -> None:
    names = variables_the_application_reads()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR"} <= names
    assert {"BREAKWATER_VAR_DIR", "BREAKWATER_EXECUTION_QUEUE", "ALLOWED_HOSTS"} <= names
    assert "POD_IP" not in names


@pytest.mark.parametrize("directory", RENDERS)
def test_every_variable_the_manifests_set_is_one_the_application_reads(directory: str) -> None:
    objects = render(directory)
    reads = variables_the_application_reads()
    documented = set(
        re.findall(r"^# ([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    )
    set_by_manifests = set(config(objects))
    for deployment in deployments(objects):
        env = container(deployment)["env"]
        names = {e["name"] for e in env}
        for name in names & KUBERNETES_ONLY:
            assert any(f"$({name})" in e.get("value", "") for e in env), name
        set_by_manifests |= names - KUBERNETES_ONLY
    assert set_by_manifests <= reads, set_by_manifests - reads
    assert set_by_manifests <= documented, set_by_manifests - documented


def test_secret_references_name_the_secret_the_example_generates() -> None:
    objects = render("overlays/example")
    secret = one(objects, "Secret", "breakwater-secrets")
    for deployment in deployments(objects):
        for entry in container(deployment)["env"]:
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref["name"] == "breakwater-secrets"
                assert ref["key"] == entry["name"]
                assert ref["key"] in secret["data"]


# --- the PromQL the scalers run, evaluated by promtool on sample series --------------------------


def adapter_rule() -> dict[str, Any]:
    """The prometheus-adapter rule docs/SCALING.md gives, as the adapter reads it."""
    text = (ROOT / "docs" / "SCALING.md").read_text()
    (block,) = re.findall(r"```yaml\n(externalRules:.*?)```", text, re.S)
    (rule,) = yaml.safe_load(block)["externalRules"]
    assert isinstance(rule, dict)
    return rule


def keda_queries() -> dict[str, str]:
    (scaled,) = [
        o
        for o in keda_objects("overlays/example-keda", "ScaledObject")
        if o["metadata"]["name"] == "breakwater-serve"
    ]
    return {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"]}


SERVE = 'namespace="breakwater",job="breakwater-serve"'
# One minute apart: agent a 60 executions a minute taking 2.5 s each, agent b 60 taking 0.5 s;
# then (from minute 10) no traffic at all.
TRAFFIC = {
    f'agent_request_duration_seconds_sum{{{SERVE},agent="a"}}': "0+150x10 1500x10",
    f'agent_request_duration_seconds_count{{{SERVE},agent="a"}}': "0+60x10 600x10",
    f'agent_request_duration_seconds_sum{{{SERVE},agent="b"}}': "0+30x10 300x10",
    f'agent_request_duration_seconds_count{{{SERVE},agent="b"}}': "0+60x10 600x10",
    # Two serve pods using 0.9 and 0.5 of a core, against a request of 1 core each.
    'container_cpu_usage_seconds_total{namespace="breakwater",container="serve",pod="p1"}': "0+54x20",
    'container_cpu_usage_seconds_total{namespace="breakwater",container="serve",pod="p2"}': "0+30x20",
    'kube_pod_container_resource_requests{namespace="breakwater",container="serve",resource="cpu",pod="p1"}': "1x20",
    'kube_pod_container_resource_requests{namespace="breakwater",container="serve",resource="cpu",pod="p2"}': "1x20",
}


def promql(tmp_path: Path, cases: list[tuple[str, str, list[tuple[str, float]]]]) -> str:
    """Run ``promtool test rules`` over TRAFFIC: each case is (query, evaluation time, expected
    samples as (labels, value)). The empty string when every case holds, else promtool's report."""
    promtool = shutil.which("promtool")
    require_service("promtool", promtool is not None, "apt-get install prometheus")
    assert promtool is not None
    tests = {
        "interval": "1m",
        "input_series": [
            {"series": series, "values": values} for series, values in TRAFFIC.items()
        ],
        "promql_expr_test": [
            {
                "expr": query,
                "eval_time": at,
                "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
            }
            for query, at, samples in cases
        ],
    }
    path = tmp_path / "scalers_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": [tests]}))
    run = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    return "" if run.returncode == 0 else run.stdout + run.stderr


def test_the_adapter_rule_gives_the_average_latency_weighted_by_request(tmp_path: Path) -> None:
    rule = adapter_rule()
    # The adapter fills <<.LabelMatchers>> with the HPA's namespace (the HPA has no selector).
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="breakwater"')
    series = [
        (f'agent_request_duration_seconds_count{{{SERVE},agent="{agent}"}}', 300.0)
        for agent in ("a", "b")
    ]
    assert not promql(
        tmp_path,
        [
            (query, "5m", [('{namespace="breakwater"}', 1.5)]),  # (2.5 + 0.5) / 2
            (query, "18m", [('{namespace="breakwater"}', 0.0)]),  # idle: 0, not NaN
            (rule["seriesQuery"], "5m", series),  # what the adapter discovers
        ],
    )


def test_the_keda_queries_give_latency_in_seconds_and_cpu_in_percent_of_the_request(
    tmp_path: Path,
) -> None:
    queries = keda_queries()
    assert not promql(
        tmp_path,
        [
            (queries["latency"], "5m", [("{}", 1.5)]),
            (queries["latency"], "18m", [("{}", 0.0)]),
            (queries["cpu"], "5m", [("{}", 70.0)]),  # (0.9 + 0.5) / 2 cores
        ],
    )


def test_promtool_reports_a_query_that_gives_another_value(tmp_path: Path) -> None:
    report = promql(tmp_path, [(keda_queries()["cpu"], "5m", [("{}", 90.0)])])
    assert "got: {} 7E+01" in report  # promtool prints what the query gave
