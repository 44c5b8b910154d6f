"""The Prometheus alerting rules in `deploy/prometheus/`: valid for `promtool` (Debian's
`prometheus` package), their unit tests pass, each rule names a runbook page that exists and a
Bulwark severity, and every metric a rule reads is one a Bulwark exporter really exposes."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from libs.metrics import ServiceMetrics
from services.gateway.metrics import GatewayMetrics
from tests.support.debian import require_binary
from tests.support.repository import ROOT

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts.test.yml"
METRIC = re.compile(r"\bbulwark_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool", "prometheus")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _exported_samples(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry exposes (`_total`, `_bucket`, ... included)."""
    return {sample.name for family in registry.collect() for sample in family.samples}


def exported_metric_names() -> set[str]:
    """The sample names of every Bulwark exporter in the tree, each metric touched once so that
    labelled metrics show their samples."""
    gateway = GatewayMetrics()
    gateway.requests.labels("POST", "/v1/orders", "201").inc()
    gateway.latency.labels("POST", "/v1/orders").observe(0.01)
    gateway.orders_submitted.labels("NEW").inc()
    gateway.requests_refused.labels("read_budget").inc()
    gateway.component_up.labels("risk").set(1)
    service = ServiceMetrics("risk", CollectorRegistry())
    service.watch_bus(lambda: {"connected": True, "outbox": 0})
    service.published("cmd.order.submit")
    service.received("cmd.order.submit", "risk-orders", 2, 5)
    service.dead_letter("risk-orders")
    service.reconnected("market-ws")
    service.order_stage("venue_ack", 0.1)
    service.decision("risk", 0.01)
    service.tick_applied(0.01)
    service.book_resynced("BTCUSDT")
    service.watch_book_ages(lambda: {"BTCUSDT": 0.1})
    service.breaker_tripped("CB-2")
    service.set_dlq_depth({"risk-orders": 1})
    return _exported_samples(gateway.registry) | _exported_samples(service.registry)


def test_rules_when_checked_by_promtool_then_valid(promtool: str) -> None:
    checked = _promtool(promtool, "check", "rules", RULES.name)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_rules_when_unit_tested_by_promtool_then_fire_when_expected_with_their_runbook(promtool: str) -> None:
    tested = _promtool(promtool, "test", "rules", RULE_TESTS.name)

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_rules_when_read_then_each_names_a_runbook_page_that_exists_and_a_severity() -> None:
    rules = _rules()
    assert len(rules) >= 10
    problems = {}
    for rule in rules:
        runbook = rule.get("annotations", {}).get("runbook_url", "")
        if not runbook.startswith("docs/runbooks/") or not (ROOT / runbook).is_file():
            problems[rule["alert"]] = f"runbook_url {runbook!r}"
        elif rule.get("labels", {}).get("severity") not in ("P0", "P1", "P2", "P3"):
            problems[rule["alert"]] = f"severity {rule.get('labels')}"
        elif not rule.get("annotations", {}).get("summary"):
            problems[rule["alert"]] = "no summary"
    assert problems == {}
    assert len({rule["alert"] for rule in rules}) == len(rules)


def test_rules_when_reading_a_metric_then_an_exporter_exposes_it() -> None:
    exported = exported_metric_names()
    assert "bulwark_gateway_http_requests_total" in exported  # the exporter's names are seen
    used = {name for rule in _rules() for name in METRIC.findall(rule["expr"])}
    assert len(used) >= 4
    assert sorted(used - exported) == []
