"""Service metrics (libs/metrics.py): bounded labels, what a scrape shows, the endpoint, and the
Grafana dashboard only using metrics that exist."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from libs.metrics import METRIC_NAMES, ORDER_STAGES, MetricsServer, ServiceMetrics, metrics_of, subject_pattern
from proto import subjects
from services.gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "bulwark.json"


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def _every_metric_observed(metrics: ServiceMetrics) -> None:
    metrics.published(subjects.md_depth("binance-usdm", "BTCUSDT"))
    metrics.received(subjects.evt_order("filled", "binance-usdm", "BTCUSDT"), "risk-events", 2, 7)
    metrics.dead_letter("risk-events")
    metrics.reconnected("nats")
    metrics.order_stage(ORDER_STAGES[0], 0.002)
    metrics.decision("risk", 0.001)
    metrics.tick_applied(0.003)
    metrics.book_resynced("BTCUSDT")
    metrics.watch_book_ages(lambda: {"BTCUSDT": 0.4, "ETHUSDT": None})
    metrics.breaker_tripped("CB-2")
    metrics.set_dlq_depth({"risk-events": 3})
    metrics.watch_bus(lambda: {"connected": True, "outbox": 0})


def _exposed_names() -> set[str]:
    """Every sample name a service process or the gateway can expose."""
    metrics = ServiceMetrics("risk")
    _every_metric_observed(metrics)
    gateway = GatewayMetrics()
    gateway.requests.labels("GET", "/v1/status", "200").inc()
    gateway.latency.labels("GET", "/v1/status").observe(0.01)
    gateway.orders_submitted.labels("NEW").inc()
    gateway.requests_refused.labels("rate").inc()
    gateway.component_up.labels("risk").set(1)
    text = generate_latest(metrics.registry).decode() + generate_latest(gateway.registry).decode()
    return set(_samples(text))


def test_subject_pattern_when_subjects_carry_symbols_and_ids_then_one_label_per_kind() -> None:
    many = {subject_pattern(subjects.md_depth("binance-usdm", f"SYM{n}USDT")) for n in range(500)} | {
        subject_pattern(subjects.evt_signal(f"strategy{n}", "BTCUSDT")) for n in range(500)
    }
    assert many == {"md.depth.>", "evt.signal.>"}
    assert subject_pattern(subjects.evt_order("filled", "binance-usdm", "ETHUSDT")) == "evt.order.filled.>"
    assert subject_pattern(subjects.CMD_ORDER_SUBMIT) == "cmd.order.submit"
    assert subject_pattern(subjects.EVT_TRADING_STATE) == "evt.trading.state"


def test_scrape_when_service_observed_then_every_family_labelled_with_its_component() -> None:
    metrics = ServiceMetrics("risk")
    _every_metric_observed(metrics)

    samples = _samples(generate_latest(metrics.registry).decode())

    families = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name in samples}
    assert set(METRIC_NAMES) <= families | {name.removesuffix("_total") for name in families}
    for name, labelsets in samples.items():
        if name.startswith("bulwark_"):
            assert all(labels["component"] == "risk" for labels in labelsets), name
    assert samples["bulwark_bus_messages_published_total"] == [{"component": "risk", "subject": "md.depth.>"}]
    assert {"component": "risk", "durable": "risk-events"} in samples["bulwark_consumer_redeliveries_total"]
    # A book with no update yet has no age (rather than a made-up 0).
    assert samples["bulwark_book_age_seconds"] == [{"component": "risk", "symbol": "BTCUSDT"}]


def test_scrape_when_read_then_process_memory_and_cpu_are_real() -> None:
    text = generate_latest(ServiceMetrics("watchdog").registry).decode()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("bulwark_process_")
    }
    assert values["bulwark_process_resident_memory_bytes"] > 10 * 1024 * 1024
    assert values["bulwark_process_cpu_seconds_total"] > 0


def test_dlq_depth_when_consumer_emptied_then_its_gauge_drops_to_zero() -> None:
    metrics = ServiceMetrics("watchdog")
    metrics.set_dlq_depth({"risk-events": 3, "position-orders": 1})
    metrics.set_dlq_depth({"position-orders": 2})

    text = generate_latest(metrics.registry).decode()

    assert 'bulwark_dlq_messages{component="watchdog",consumer="risk-events"} 0.0' in text
    assert 'bulwark_dlq_messages{component="watchdog",consumer="position-orders"} 2.0' in text


def test_metrics_of_when_bus_is_a_test_fake_then_none() -> None:
    class FakeBus:
        pass

    assert metrics_of(FakeBus()) is None


def test_metrics_server_when_scraped_over_http_then_answers_the_registry() -> None:
    metrics = ServiceMetrics("state-builder")
    metrics.tick_applied(0.004)
    server = MetricsServer.start(metrics.registry, "127.0.0.1", 0)
    try:
        url = server.url()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url), url
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    finally:
        server.stop()
    assert 'bulwark_tick_to_hot_state_seconds_count{component="state-builder"} 1.0' in body


def test_metrics_server_when_bound_on_every_interface_then_advertises_an_address_not_the_wildcard() -> None:
    server = MetricsServer.start(ServiceMetrics("risk").registry, "0.0.0.0", 0)
    try:
        assert "0.0.0.0" not in server.url()
    finally:
        server.stop()


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])] + [
        item.get("query", "") for item in dashboard["templating"]["list"] if isinstance(item.get("query"), str)
    ]
    return {name for expr in exprs for name in re.findall(r"\b(bulwark_[a-z0-9_]+)", expr)}


def test_grafana_dashboard_when_loaded_then_every_metric_it_queries_is_exported() -> None:
    used = _dashboard_metrics()
    missing = used - _exposed_names()
    assert len(used) >= 15, used
    assert not missing, f"the dashboard queries metrics no service exports: {sorted(missing)}"


def test_grafana_dashboard_when_loaded_then_shows_every_service_metric() -> None:
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in _dashboard_metrics()}
    unused = [name for name in METRIC_NAMES if name not in used and f"{name}_total" not in used]
    assert not unused, f"metrics no panel shows: {unused}"


@pytest.mark.parametrize("stage", ORDER_STAGES)
def test_order_stage_when_clock_skew_makes_it_negative_then_counted_as_zero(stage: str) -> None:
    metrics = ServiceMetrics("position")
    metrics.order_stage(stage, -0.5)
    text = generate_latest(metrics.registry).decode()
    assert f'bulwark_order_stage_latency_seconds_sum{{component="position",stage="{stage}"}} 0.0' in text
