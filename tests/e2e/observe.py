"""What the e2e tests observe the system with: a small OTLP/HTTP trace receiver the services
export to (`BULWARK_OTEL_ENDPOINT`), and Prometheus scrapes of their `metrics_url`s."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.harness.system import RunningSystem


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    attributes: dict[str, str]
    span_id: str = ""
    parent_span_id: str = ""
    """Empty for the root of a trace."""


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
                    found.append(
                        ReceivedSpan(
                            resource["service.name"],
                            span.name,
                            span.trace_id.hex(),
                            attributes,
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(url, timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(value for found, value in samples.get(name, []) if labels.items() <= found.items())


def place_filled_order(system: RunningSystem) -> str:
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
