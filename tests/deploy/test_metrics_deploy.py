"""Every service's Prometheus endpoint is reachable the way each deployment scrapes it: compose
labels, k8s annotations and a named container port, and the optional ServiceMonitor Component."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
MONITORING_DIR = K8S_DIR / "monitoring"
SERVICE_MODULE = "services."
NOT_RUNTIME = ("services.venue_sim.",)
"""The venue simulator is not a Bulwark service process (no runtime, no metrics)."""


def _docs(directory: Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _service_workloads() -> dict[str, dict[str, Any]]:
    found = {}
    for doc in _docs(K8S_DIR) + _docs(K8S_DIR / "backup-venue"):
        if doc["kind"] != "Deployment":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        module = container["args"][2]
        if module.startswith(SERVICE_MODULE) and not module.startswith(NOT_RUNTIME):
            found[doc["metadata"]["name"]] = doc
    return found


def _metrics_port() -> int:
    config = yaml.safe_load((K8S_DIR / "configmap.yaml").read_text())["data"]
    assert config["BULWARK_METRICS_HOST"] == "0.0.0.0"  # reachable from outside the pod
    return int(config["BULWARK_METRICS_PORT"])


def test_k8s_service_pods_when_scheduled_then_annotated_and_expose_the_metrics_port() -> None:
    port = _metrics_port()
    workloads = _service_workloads()
    assert {"gateway", "market-data", "state-builder", "risk", "position", "watchdog", "position-backup"} <= set(
        workloads
    )
    for name, workload in workloads.items():
        template = workload["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) == port, name
        assert template["metadata"]["labels"]["bulwark.io/metrics"] == "true", name
        (container,) = template["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"], name


def test_monitoring_component_when_enabled_then_scrapes_every_service_pod_and_only_opens_that_port() -> None:
    port = _metrics_port()
    component = yaml.safe_load((MONITORING_DIR / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    docs = {doc["kind"]: doc for doc in _docs(MONITORING_DIR)}
    assert sorted(component["resources"]) == sorted(
        p.name for p in MONITORING_DIR.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for kind in ("Service", "NetworkPolicy"):
        kubernetes_validate.validate(docs[kind], "1.33.0", strict=True)
    service, monitor, policy = docs["Service"], docs["ServiceMonitor"], docs["NetworkPolicy"]
    for workload in _service_workloads().values():
        labels = workload["spec"]["template"]["metadata"]["labels"].items()
        assert service["spec"]["selector"].items() <= labels
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert (
        "# components:" in (K8S_DIR / "kustomization.yaml").read_text()
        and "#   - monitoring" in (K8S_DIR / "kustomization.yaml").read_text()
    )


@pytest.fixture(name="compose")
def compose_fixture() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_services_when_started_then_listen_for_prometheus_and_carry_scrape_labels(
    compose: dict[str, Any],
) -> None:
    modules = {name: " ".join(svc.get("command", [])) for name, svc in compose["services"].items()}
    services = {
        name: compose["services"][name]
        for name, command in modules.items()
        if command.startswith(f"python -m {SERVICE_MODULE}") and not command.startswith(f"python -m {NOT_RUNTIME[0]}")
    }
    assert len(services) >= 8
    for name, service in services.items():
        env = service["environment"]
        assert env["BULWARK_METRICS_HOST"] == "0.0.0.0" and env["BULWARK_METRICS_PORT"] == "9464", name
        labels = service["labels"]
        assert labels["prometheus.io/scrape"] == "true" and labels["prometheus.io/port"] == "9464", name
