"""One order, one trace (libs/telemetry.py): from the market tick that triggered the signal through
risk, the submit, the venue's acknowledgement and the fill, with the context carried the way the
bus carries it (`traceparent` headers) and the venue's answers joined by client order id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.telemetry import (
    OrderTraces,
    Tick,
    add_span_processor,
    handling_tick,
    otlp_exporter,
    remote_context,
    setup_tracing,
    signal_span,
    trace_headers,
    tracer,
)

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(name="spans")
def spans_fixture() -> Iterator[InMemorySpanExporter]:
    if not getattr(_EXPORTER, "_installed", False):
        setup_tracing("unit-tests")
        add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _EXPORTER._installed = True  # type: ignore[attr-defined]
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _by_name(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans.get_finished_spans()}


def _order_path(traces: OrderTraces, tick_ns: int) -> dict[str, str]:
    """The order's way through the processes, each hop only seeing the headers of the one before."""
    with handling_tick(Tick("BTCUSDT", tick_ns, "md-1")), signal_span("strategy", "trend", "BTCUSDT"):
        signal_headers = trace_headers()  # what the bus puts on the signal
    with remote_context(signal_headers), tracer("risk").start_as_current_span("risk.decision"):
        approval_headers = trace_headers()
    with remote_context(approval_headers), tracer("position").start_as_current_span("position.submit"):
        traces.remember("bw-1")
        with traces.span("position", "venue.ack", "bw-1"):
            pass
    # The fill comes on the user stream later, outside any handler of the order.
    with traces.span("position", "order.fill", "bw-1"):
        return trace_headers()


def test_order_when_traced_across_hops_then_every_span_shares_the_tick_trace_id(
    spans: InMemorySpanExporter,
) -> None:
    fill_headers = _order_path(OrderTraces(), tick_ns=1_700_000_000_000_000_000)

    found = _by_name(spans)
    assert set(found) == {
        "market.tick",
        "strategy.signal",
        "risk.decision",
        "position.submit",
        "venue.ack",
        "order.fill",
    }
    trace_ids = {span.context.trace_id for span in found.values()}
    assert len(trace_ids) == 1
    root = found["market.tick"]
    assert root.parent is None
    assert root.start_time == 1_700_000_000_000_000_000  # when market-data received the tick
    assert root.attributes is not None and root.attributes["bulwark.message_id"] == "md-1"
    parent_of = {name: span.parent.span_id for name, span in found.items() if span.parent is not None}
    assert parent_of["strategy.signal"] == root.context.span_id
    assert parent_of["risk.decision"] == found["strategy.signal"].context.span_id
    assert parent_of["position.submit"] == found["risk.decision"].context.span_id
    assert parent_of["venue.ack"] == found["position.submit"].context.span_id
    assert parent_of["order.fill"] == found["position.submit"].context.span_id
    # What position publishes with the fill carries the same trace on to its consumers.
    assert fill_headers["traceparent"].split("-")[1] == format(trace_ids.pop(), "032x")


def test_signal_when_no_tick_is_being_handled_then_it_starts_its_own_trace(spans: InMemorySpanExporter) -> None:
    with signal_span("strategy", "trend", "BTCUSDT"):
        pass

    (span,) = spans.get_finished_spans()
    assert span.name == "strategy.signal" and span.parent is None


def test_fill_when_order_not_remembered_then_a_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    traces = OrderTraces()
    with tracer("position").start_as_current_span("position.submit"):
        traces.remember("bw-known")
    with traces.span("position", "order.fill", "bw-unknown"):
        pass

    found = _by_name(spans)
    assert found["order.fill"].parent is None
    assert found["order.fill"].context.trace_id != found["position.submit"].context.trace_id


def test_order_traces_when_over_limit_then_oldest_forgotten() -> None:
    traces = OrderTraces(limit=2)
    setup_tracing("unit-tests")
    for coid in ("a", "b", "c"):
        with tracer("position").start_as_current_span("position.submit"):
            traces.remember(coid)
        traces.acknowledged(coid, 1)
    assert traces.context("a") is None and traces.context("c") is not None
    assert traces.first_fill("a") is None
    assert traces.first_fill("c") == 1 and traces.first_fill("c") is None  # the first fill only


def test_otlp_exporter_when_protocol_unknown_then_clear_error() -> None:
    with pytest.raises(ValueError, match="OTLP protocol 'thrift'"):
        otlp_exporter("http://collector:4318", "thrift")
    assert type(otlp_exporter("http://collector:4318")).__module__.endswith("http.trace_exporter")
    assert type(otlp_exporter("http://collector:4317", "grpc")).__module__.endswith("grpc.trace_exporter")
