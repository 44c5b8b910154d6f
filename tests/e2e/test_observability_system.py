"""Metrics and traces of the whole system, as `bulwark up` runs it: every component's `metrics_url`
answers with its key metrics, and an order placed on the gateway is one trace across the gateway,
risk and position processes (exported over OTLP to a collector, here a small OTLP/HTTP receiver)."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.harness.system import RunningSystem, quiet_strategy_args, start_system, stop_system
from libs.metrics import ORDER_STAGES, STAGE_SIGNAL_TO_RISK
from proto.subjects import CORE_COMPONENTS

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    attributes: dict[str, str]


class Collector:
    """An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf): what the services export."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    found.append(ReceivedSpan(resource["service.name"], span.name, span.trace_id.hex(), attributes))
        with self._lock:
            self.spans.extend(found)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[RunningSystem]:
    base = tmp_path_factory.mktemp("observed")
    # Quiet strategies: the operator's order is the only one, so its trace is the one to find.
    env = {"BULWARK_OTEL_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    running = start_system(base / "data", base / "bulwark-up.log", quiet_strategy_args(Path(base)), env=env)
    try:
        running.wait_all_ready()
        yield running
    finally:
        stop_system(running)


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(url, timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(value for found, value in samples.get(name, []) if labels.items() <= found.items())


def _place_order(system: RunningSystem) -> str:
    body = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}
    with system.client(system.operator_token) as client:
        answer = client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"obs-{uuid.uuid4()}"})
        assert answer.status_code in (200, 201, 202), answer.text
        order = answer.json()
        assert order["status"] not in ("DENIED", "REJECTED"), order
        deadline = time.monotonic() + 30
        while order["status"] != "FILLED" and time.monotonic() < deadline:
            time.sleep(0.3)
            order = client.get(f"/v1/orders/{order['order_id']}").json()
        assert order["status"] == "FILLED", order
    return str(order["client_order_id"])


def test_order_when_filled_then_one_trace_across_processes_and_stage_latencies_counted(
    system: RunningSystem, collector: Collector
) -> None:
    client_order_id = _place_order(system)

    deadline = time.monotonic() + 20
    trace: list[ReceivedSpan] = []
    wanted = {"gateway.submit", "risk.decision", "position.submit", "venue.ack", "order.fill"}
    while time.monotonic() < deadline:
        spans = collector.snapshot()
        roots = [
            s
            for s in spans
            if s.name == "gateway.submit" and s.attributes.get("bulwark.client_order_id") == client_order_id
        ]
        trace = [s for s in spans if roots and s.trace_id == roots[0].trace_id]
        if wanted <= {s.name for s in trace}:
            break
        time.sleep(0.3)
    assert wanted <= {s.name for s in trace}, sorted((s.service, s.name) for s in trace)
    assert {s.service for s in trace} >= {"gateway", "risk", "position"}
    assert {s.attributes.get("bulwark.client_order_id") for s in trace if s.name == "order.fill"} == {client_order_id}

    components = system.status()["components"]
    risk = _scrape(components["risk"]["metrics_url"])
    position = _scrape(components["position"]["metrics_url"])
    stages = {stage for stage in ORDER_STAGES if stage != STAGE_SIGNAL_TO_RISK}
    counted = {
        stage
        for stage in stages
        if _value(risk, "bulwark_order_stage_latency_seconds_count", stage=stage)
        + _value(position, "bulwark_order_stage_latency_seconds_count", stage=stage)
        > 0
    }
    assert counted == stages
    assert _value(risk, "bulwark_decision_latency_seconds_count", kind="risk") >= 1


def test_status_when_system_up_then_every_component_metrics_url_answers_its_key_metrics(system: RunningSystem) -> None:
    components = system.wait_all_ready()["components"]
    strategies = [name for name in components if name.startswith("strategy-")]
    scraped = {}
    for name in (*CORE_COMPONENTS, *strategies):
        url = components[name]["metrics_url"]
        assert url and url.startswith("http://127.0.0.1:"), (name, url)
        samples = _scrape(url)
        assert _value(samples, "bulwark_process_resident_memory_bytes", component=name) > 0, name
        assert _value(samples, "bulwark_process_cpu_seconds_total", component=name) > 0, name
        assert _value(samples, "bulwark_bus_connected", component=name) == 1, name
        scraped[name] = samples
    assert len({components[name]["metrics_url"] for name in scraped}) == len(scraped), "two services on one port"

    market_data, state_builder = scraped["market-data"], scraped["state-builder"]
    assert _value(market_data, "bulwark_bus_messages_published_total", subject="md.depth.>") > 0
    assert _value(state_builder, "bulwark_bus_messages_received_total", subject="md.depth.>") > 0
    assert _value(state_builder, "bulwark_tick_to_hot_state_seconds_count") > 0
    ages = {labels["symbol"]: value for labels, value in state_builder["bulwark_book_age_seconds"]}
    assert set(ages) >= {"BTCUSDT", "ETHUSDT"} and all(0 <= age < 30 for age in ages.values()), ages
    assert "bulwark_consumer_pending_messages" in state_builder
    watchdog_families = httpx.get(components["watchdog"]["metrics_url"], timeout=10).text
    assert "# TYPE bulwark_dlq_messages gauge" in watchdog_families
