"""Metrics and trace context through a real nats-server: what one bus publishes inside a span, the
consumer of another bus handles inside the same trace, and both count what passed."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from libs.bus import Bus, Delivery
from libs.metrics import ServiceMetrics
from libs.telemetry import add_span_processor, setup_tracing, tracer
from proto import subjects
from proto.enums import OrderType, Side
from proto.envelope import Message
from proto.messages import SignalGenerated
from tests.support.polling import eventually


def _signal(n: int) -> SignalGenerated:
    return SignalGenerated(
        strategy="trend",
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal("0.001"),
        reason=f"test {n}",
    )


async def _bus(nats_url: str, component: str) -> Bus:
    bus = Bus(component)
    bus.metrics = ServiceMetrics(component)
    await bus.connect(nats_url)
    await bus.ensure_streams()
    return bus


async def test_signal_when_consumed_by_another_bus_then_same_trace_and_both_sides_counted(nats_url: str) -> None:
    setup_tracing("integration-tests")
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    strategy, risk = await _bus(nats_url, "strategy-trend"), await _bus(nats_url, "risk")
    handled: list[int] = []
    try:
        with tracer("strategy").start_as_current_span("strategy.signal") as sent:
            for n in range(3):
                await strategy.publish(subjects.evt_signal("trend", "BTCUSDT"), _signal(n))
        expected_trace = sent.get_span_context().trace_id

        async def on_signal(message: Message, delivery: Delivery) -> None:
            with tracer("risk").start_as_current_span("risk.decision") as span:
                handled.append(span.get_span_context().trace_id)
            if len(handled) == 1:
                raise RuntimeError("first delivery fails once: redelivered")

        await risk.consume(
            stream=subjects.STREAM_SIGNALS.name,
            durable="risk-signals-telemetry-test",
            filter_subjects=[subjects.EVT_SIGNAL_ALL],
            handler=on_signal,
            batch=1,
        )
        await eventually(lambda: len(handled) >= 4, timeout_s=20)
    finally:
        await asyncio.gather(strategy.close(), risk.close())

    assert set(handled) == {expected_trace}
    decisions = [span for span in exporter.get_finished_spans() if span.name == "risk.decision"]
    assert all(span.parent is not None and span.parent.trace_id == expected_trace for span in decisions)
    assert trace.get_current_span().get_span_context().is_valid is False  # nothing leaks into the caller
    published = generate_latest(strategy.metrics.registry).decode()  # type: ignore[union-attr]
    received = generate_latest(risk.metrics.registry).decode()  # type: ignore[union-attr]
    assert 'bulwark_bus_messages_published_total{component="strategy-trend",subject="evt.signal.>"} 3.0' in published
    assert 'bulwark_bus_messages_received_total{component="risk",subject="evt.signal.>"} 4.0' in received
    assert 'bulwark_consumer_redeliveries_total{component="risk",durable="risk-signals-telemetry-test"} 1.0' in received
    assert 'bulwark_consumer_pending_messages{component="risk",durable="risk-signals-telemetry-test"} 0.0' in received
