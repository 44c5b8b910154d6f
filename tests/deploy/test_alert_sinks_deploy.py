"""The alert sinks (Slack, PagerDuty, Telegram, a signed webhook) can be switched on in both
deployments: every `alert_*` setting reaches the watchdog in docker-compose.yml (from the environment
or .env, empty by default: off) and in k8s/ (URLs, tokens and keys from the optional Secret
`bulwark-alerts`, never a ConfigMap; severities and timeouts from the ConfigMap), and
docs/operations.md says how to set each."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.settings import Settings
from services.watchdog.adapters import webhook_sinks

ROOT = Path(__file__).resolve().parents[2]
ALERT_SETTINGS = {f"BULWARK_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.name.startswith("alert_")}
SECRET_SETTINGS = {
    "BULWARK_ALERT_SLACK_WEBHOOK_URL",
    "BULWARK_ALERT_PAGERDUTY_URL",
    "BULWARK_ALERT_PAGERDUTY_ROUTING_KEY",
    "BULWARK_ALERT_TELEGRAM_BOT_TOKEN",
    "BULWARK_ALERT_TELEGRAM_CHAT_ID",
    "BULWARK_ALERT_WEBHOOK_URL",
    "BULWARK_ALERT_WEBHOOK_SECRET",
}
"""What switches a sink on and what a reader could abuse: URLs with tokens in them, tokens, keys."""
TUNING_SETTINGS = ALERT_SETTINGS - SECRET_SETTINGS
ALERTS_SECRET = "bulwark-alerts"
SINKS = ["slack", "pagerduty", "telegram", "webhook"]
COMPOSE_DEFAULT = re.compile(r"^\$\{(?P<name>\w+):-(?P<default>[^}]*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def _container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (container,) = _named(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _configmap_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= _named(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
    return env


def _compose_env(service: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """The alert settings a compose service gets, `${VAR:-default}` expanded with `given` (the .env)."""
    env = {}
    for name in ALERT_SETTINGS & set(service["environment"]):
        match = COMPOSE_DEFAULT.match(str(service["environment"][name]))
        assert match is not None and match["name"] == name, f"{name}: set it as ${{{name}:-default}}"
        env[name] = given.get(name, match["default"])
    return env


def test_alert_settings_when_listed_here_then_every_one_is_either_a_secret_or_tuning() -> None:
    assert SECRET_SETTINGS <= ALERT_SETTINGS, "a sink setting here that libs/settings.py no longer has"
    assert len(TUNING_SETTINGS) >= 4 and "BULWARK_ALERT_RUNBOOK_BASE_URL" in TUNING_SETTINGS


def test_compose_watchdog_when_started_then_every_sink_setting_from_the_environment_off_by_default(
    compose: dict[str, Any],
) -> None:
    watchdog = compose["services"]["watchdog"]
    assert set(watchdog["environment"]) >= ALERT_SETTINGS, sorted(ALERT_SETTINGS - set(watchdog["environment"]))
    defaults = _compose_env(watchdog, {})
    assert {name: defaults[name] for name in SECRET_SETTINGS} == dict.fromkeys(SECRET_SETTINGS, "")
    settings = Settings.from_env(defaults)
    assert webhook_sinks(settings) == []  # nothing set: every sink off, as without compose
    for name in TUNING_SETTINGS:  # the same defaults as libs/settings.py
        field = name.removeprefix("BULWARK_").lower()
        assert getattr(settings, field) == getattr(Settings(), field), name

    given = {name: f"https://sink.example/{name.lower()}" for name in SECRET_SETTINGS}
    configured = Settings.from_env(_compose_env(watchdog, given) | {"BULWARK_ALERT_PAGERDUTY_MIN_SEVERITY": "P0"})
    assert [sink.name for sink in webhook_sinks(configured)] == SINKS
    assert configured.alert_telegram_bot_token == given["BULWARK_ALERT_TELEGRAM_BOT_TOKEN"]
    # The gateway links /v1/alerts to the same runbooks as the sinks.
    assert _compose_env(compose["services"]["gateway"], {}) == {
        "BULWARK_ALERT_RUNBOOK_BASE_URL": defaults["BULWARK_ALERT_RUNBOOK_BASE_URL"]
    }


def test_k8s_watchdog_when_deployed_then_sink_secrets_from_the_optional_secret_and_tuning_from_the_configmap(
    k8s_docs: list[dict[str, Any]],
) -> None:
    container = _container(k8s_docs, "watchdog")
    refs = {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in container["env"]
        if var["name"] in ALERT_SETTINGS and "secretKeyRef" in var.get("valueFrom", {})
    }
    assert refs == {name: {"name": ALERTS_SECRET, "key": name, "optional": True} for name in SECRET_SETTINGS}
    assert not any(var["name"] in ALERT_SETTINGS and "value" in var for var in container["env"]), "a literal"
    configmap = _configmap_env(k8s_docs, container)
    assert configmap.keys() & ALERT_SETTINGS == TUNING_SETTINGS
    for configmap_doc in [doc for doc in k8s_docs if doc["kind"] == "ConfigMap"]:
        assert not configmap_doc.get("data", {}).keys() & SECRET_SETTINGS, "a sink secret in a ConfigMap"

    # Without the Secret (optional) the watchdog starts with every sink off; with it, all four on.
    tuning = {name: configmap[name] for name in TUNING_SETTINGS}
    assert webhook_sinks(Settings.from_env(tuning)) == []
    template = _named(k8s_docs, "Secret", ALERTS_SECRET)["stringData"]
    assert set(template) == SECRET_SETTINGS
    assert [sink.name for sink in webhook_sinks(Settings.from_env(tuning | template))] == SINKS
    assert _configmap_env(k8s_docs, _container(k8s_docs, "gateway"))["BULWARK_ALERT_RUNBOOK_BASE_URL"]


def test_alerts_docs_when_read_then_say_how_to_set_every_sink_setting() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    missing = sorted(name for name in ALERT_SETTINGS if f"`{name}`" not in operations)
    assert not missing, f"docs/operations.md does not say how to set {missing}"
    assert ALERTS_SECRET in operations and "docker-compose.yml" in operations
