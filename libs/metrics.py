"""Prometheus metrics every service process exports, on a registry of its own and a port of its own.

One `ServiceMetrics` per process (built by `libs.runtime.service.run_service`, reachable as
`ctx.metrics`); the bus counts what it publishes and consumes, services observe the rest through
the small methods below. Every series carries the `component` label, so one dashboard query
covers every process whichever way Prometheus found it. Label values stay bounded whatever comes
in: subjects are reduced to their pattern (`subject_pattern`), stages and kinds come from the
constants here, symbols and breakers from configuration.

Names are the operator's contract (SPEC §10): never rename one; `METRIC_NAMES` lists them all
and the Grafana dashboard is checked against it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: from a sub-millisecond hop on one machine to a slow venue acknowledgement."""

STAGE_GATEWAY_TO_RISK = "gateway_to_risk"
"""An operator order from the gateway's publish to risk receiving it."""
STAGE_SIGNAL_TO_RISK = "signal_to_risk"
"""A strategy signal from its publish to risk receiving it."""
STAGE_RISK_DECISION = "risk_decision"
"""Risk receiving an order or signal to its decision being published."""
STAGE_RISK_TO_POSITION = "risk_to_position"
"""An approval from its publish to the position service receiving it."""
STAGE_VENUE_ACK = "venue_ack"
"""The venue request sent to its acknowledgement (the REST answer)."""
STAGE_ACK_TO_FILL = "ack_to_fill"
"""The venue acknowledgement to the first fill of the order."""
ORDER_STAGES = (
    STAGE_GATEWAY_TO_RISK,
    STAGE_SIGNAL_TO_RISK,
    STAGE_RISK_DECISION,
    STAGE_RISK_TO_POSITION,
    STAGE_VENUE_ACK,
    STAGE_ACK_TO_FILL,
)

MAX_SUBJECT_CACHE = 10_000
"""Raw subjects remembered with their pattern; beyond, patterns are computed again (still bounded)."""

# Subjects whose third token is a bounded event name rather than an id (`evt.order.filled.<venue>.<symbol>`).
_THIRD_TOKEN_KEPT = frozenset({"evt.order"})

METRIC_NAMES = (
    "bulwark_bus_messages_published_total",
    "bulwark_bus_messages_received_total",
    "bulwark_bus_connected",
    "bulwark_bus_outbox_messages",
    "bulwark_reconnects_total",
    "bulwark_consumer_pending_messages",
    "bulwark_consumer_redeliveries_total",
    "bulwark_consumer_dead_lettered_total",
    "bulwark_dlq_messages",
    "bulwark_book_age_seconds",
    "bulwark_book_resyncs_total",
    "bulwark_tick_to_hot_state_seconds",
    "bulwark_decision_latency_seconds",
    "bulwark_order_stage_latency_seconds",
    "bulwark_breaker_trips_total",
    "bulwark_process_resident_memory_bytes",
    "bulwark_process_cpu_seconds_total",
    "bulwark_process_start_time_seconds",
)
"""Every metric family a service process exports (histograms add `_bucket`, `_sum`, `_count`)."""


def subject_pattern(subject: str) -> str:
    """The bounded label of a subject: its kind, never the symbols, ids or names in it.

    `cmd.order.submit` stays as it is (three tokens or fewer are fixed names or bounded ones
    such as a breaker id); longer subjects keep their first two tokens (`md.depth.>`,
    `evt.signal.>`), order events their event name too (`evt.order.filled.>`).
    """
    tokens = subject.split(".")
    if len(tokens) <= 3:
        return subject
    keep = 3 if ".".join(tokens[:2]) in _THIRD_TOKEN_KEPT else 2
    return ".".join(tokens[:keep]) + ".>"


class _ProcessCollector(Collector):
    """RSS, CPU seconds and start time of this process, labelled with the component."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.process = psutil.Process(os.getpid())

    def collect(self) -> Iterator[Any]:
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            cpu = self.process.cpu_times()
            started = self.process.create_time()
        memory = GaugeMetricFamily(
            "bulwark_process_resident_memory_bytes", "Resident memory of the process", labels=["component"]
        )
        memory.add_metric([self.component], float(rss))
        seconds = CounterMetricFamily(
            "bulwark_process_cpu_seconds", "CPU time of the process, user and system", labels=["component"]
        )
        seconds.add_metric([self.component], float(cpu.user + cpu.system))
        start = GaugeMetricFamily(
            "bulwark_process_start_time_seconds", "When the process started (Unix time)", labels=["component"]
        )
        start.add_metric([self.component], float(started))
        yield from (memory, seconds, start)


class _BusCollector(Collector):
    """Connection state and outbox size of the bus, read at scrape time."""

    def __init__(self, component: str, status: Callable[[], dict[str, Any]]) -> None:
        self.component = component
        self.status = status

    def collect(self) -> Iterator[Any]:
        status = self.status()
        connected = GaugeMetricFamily("bulwark_bus_connected", "1 while connected to NATS", labels=["component"])
        connected.add_metric([self.component], 1.0 if status.get("connected") else 0.0)
        outbox = GaugeMetricFamily(
            "bulwark_bus_outbox_messages", "Messages buffered while the bus is down (FM-C6)", labels=["component"]
        )
        outbox.add_metric([self.component], float(status.get("outbox", 0)))
        yield from (connected, outbox)


class _BookAgeCollector(Collector):
    """Age of every book, read from the owner's state at scrape time (never stale between updates)."""

    def __init__(self, component: str, ages: Callable[[], dict[str, float | None]]) -> None:
        self.component = component
        self.ages = ages

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "bulwark_book_age_seconds",
            "Time since the book of a symbol last changed (state-builder's view; absent before the first update)",
            labels=["component", "symbol"],
        )
        for symbol, age in sorted(self.ages().items()):
            if age is not None:
                family.add_metric([self.component, symbol], max(0.0, age))
        yield family


class ServiceMetrics:
    """The metrics of one service process (see the module docstring)."""

    def __init__(self, component: str, registry: CollectorRegistry | None = None) -> None:
        self.component = component
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_published = Counter(
            "bulwark_bus_messages_published",
            "Messages published on the bus, by subject pattern",
            ["component", "subject"],
            registry=r,
        )
        self.messages_received = Counter(
            "bulwark_bus_messages_received",
            "Messages delivered to this process's durable consumers, by subject pattern",
            ["component", "subject"],
            registry=r,
        )
        self.reconnects = Counter(
            "bulwark_reconnects",
            "Connections re-established, by link (nats, market-ws, user-stream, ...)",
            ["component", "link"],
            registry=r,
        )
        self.consumer_pending = Gauge(
            "bulwark_consumer_pending_messages",
            "Messages in the stream not yet delivered to the durable consumer (its lag)",
            ["component", "durable"],
            registry=r,
        )
        self.redeliveries = Counter(
            "bulwark_consumer_redeliveries",
            "Deliveries of a message that was delivered before (nak, ack timeout, restart)",
            ["component", "durable"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "bulwark_consumer_dead_lettered",
            "Messages this process's consumers moved to the dead-letter stream",
            ["component", "durable"],
            registry=r,
        )
        self.dlq_messages = Gauge(
            "bulwark_dlq_messages",
            "Dead letters waiting (not retried), by the consumer that gave up on them (DLQ depth)",
            ["component", "consumer"],
            registry=r,
        )
        self.book_resyncs = Counter(
            "bulwark_book_resyncs",
            "Book resynchronisations (a new REST snapshot), by symbol",
            ["component", "symbol"],
            registry=r,
        )
        self.tick_to_hot_state = Histogram(
            "bulwark_tick_to_hot_state_seconds",
            "From market-data receiving a tick to state-builder having applied it",
            ["component"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.decision_latency = Histogram(
            "bulwark_decision_latency_seconds",
            "Time to decide on one input: a strategy on a tick (signal), risk on an order (approve or deny)",
            ["component", "kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.order_stage_latency = Histogram(
            "bulwark_order_stage_latency_seconds",
            "Latency of each stage of an order: " + ", ".join(ORDER_STAGES),
            ["component", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.breaker_trips = Counter(
            "bulwark_breaker_trips", "Circuit breakers tripped, by breaker id", ["component", "breaker"], registry=r
        )
        r.register(_ProcessCollector(component))
        self._published: dict[str, Any] = {}
        self._received: dict[str, Any] = {}
        self._dlq_consumers: set[str] = set()
        self._pending: dict[str, Any] = {}

    def watch_bus(self, status: Callable[[], dict[str, Any]]) -> None:
        """Export the bus's connection state and outbox (`Bus.status`) at every scrape."""
        self.registry.register(_BusCollector(self.component, status))

    # -------------------------------------------------------------- observations

    def published(self, subject: str) -> None:
        self._child(self._published, self.messages_published, subject).inc()

    def received(self, subject: str, durable: str, num_delivered: int, num_pending: int | None) -> None:
        """One delivery to a durable consumer: counts, redelivery, and the consumer's lag."""
        self._child(self._received, self.messages_received, subject).inc()
        if num_delivered > 1:
            self.redeliveries.labels(self.component, durable).inc()
        if num_pending is not None:
            pending = self._pending.get(durable)
            if pending is None:
                pending = self._pending[durable] = self.consumer_pending.labels(self.component, durable)
            pending.set(num_pending)

    def dead_letter(self, durable: str) -> None:
        self.dead_lettered.labels(self.component, durable).inc()

    def reconnected(self, link: str) -> None:
        self.reconnects.labels(self.component, link).inc()

    def order_stage(self, stage: str, seconds: float) -> None:
        """One order passed `stage` (one of `ORDER_STAGES`) in `seconds` (negative clock skew counts as 0)."""
        self.order_stage_latency.labels(self.component, stage).observe(max(0.0, seconds))

    def decision(self, kind: str, seconds: float) -> None:
        self.decision_latency.labels(self.component, kind).observe(max(0.0, seconds))

    def tick_applied(self, seconds: float) -> None:
        self.tick_to_hot_state.labels(self.component).observe(max(0.0, seconds))

    def book_resynced(self, symbol: str) -> None:
        self.book_resyncs.labels(self.component, symbol).inc()

    def watch_book_ages(self, ages: Callable[[], dict[str, float | None]]) -> None:
        """Export `bulwark_book_age_seconds` per symbol from `ages()` (seconds, None: no book yet) at every scrape."""
        self.registry.register(_BookAgeCollector(self.component, ages))

    def breaker_tripped(self, breaker: str) -> None:
        self.breaker_trips.labels(self.component, breaker).inc()

    def set_dlq_depth(self, waiting: dict[str, int]) -> None:
        """Dead letters waiting per consumer; a consumer no longer listed drops to 0."""
        for consumer in self._dlq_consumers - waiting.keys():
            self.dlq_messages.labels(self.component, consumer).set(0)
        for consumer, count in waiting.items():
            self.dlq_messages.labels(self.component, consumer).set(count)
        self._dlq_consumers |= waiting.keys()

    def _child(self, cache: dict[str, Any], metric: Counter, subject: str) -> Any:
        child = cache.get(subject)
        if child is None:
            child = metric.labels(self.component, subject_pattern(subject))
            if len(cache) < MAX_SUBJECT_CACHE:
                cache[subject] = child
        return child


def metrics_of(bus: object) -> ServiceMetrics | None:
    """The metrics a bus counts into (`Bus.metrics`); None for a bus without (a test's fake)."""
    found = getattr(bus, "metrics", None)
    return found if isinstance(found, ServiceMetrics) else None


class MetricsServer:
    """The process's `/metrics` endpoint: a small HTTP server on its own thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = int(server.server_address[1])

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        """Serve `registry` on host:port (0: a free port the system chooses).

        Raises:
            OSError: the port cannot be bound.
        """
        server, thread = start_http_server(port, addr=host, registry=registry)
        return cls(server, thread, host)

    def url(self, advertised_host: str | None = None) -> str:
        """The URL Prometheus scrapes; a wildcard bind address is advertised as the host name."""
        host = advertised_host or self.host
        if host in ("0.0.0.0", "::", ""):
            # In a container or pod the host name resolves to its own address (/etc/hosts).
            host = socket.gethostname()
            with contextlib.suppress(OSError):
                host = socket.gethostbyname(host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
            self._server.server_close()
        self._thread.join(timeout=2.0)
