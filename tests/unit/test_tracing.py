"""One order, one trace (libs/telemetry.py): from the market tick that triggered the signal through
risk, the submit, the venue's acknowledgement and the fill, with the context carried the way the
bus carries it (`traceparent` headers) and the venue's answers joined by client order id."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.bus import Bus
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.telemetry import (
    Evaluation,
    HotStateRead,
    OrderTraces,
    Tick,
    add_span_processor,
    evaluating,
    handling_tick,
    otlp_exporter,
    remote_context,
    setup_tracing,
    signal_span,
    trace_headers,
    tracer,
)
from proto import subjects
from proto.codec import encode
from proto.enums import AlertSeverity, HotStateStatus, StrategyState
from proto.messages import AlertRaised, SymbolHotState, SymbolsReply, Trade
from services.strategy.handlers import StrategyService
from services.strategy.state import Ticked

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


def _hot_state(symbol: str) -> dict[str, str | int]:
    return {"bulwark.hot_state": "VALID", "bulwark.book.last_update_id": 42} if symbol == "BTCUSDT" else {}


def test_signal_when_periodic_evaluation_then_traced_from_latest_tick_of_its_symbol_with_hot_state(
    spans: InMemorySpanExporter,
) -> None:
    # Where every built-in kind decides: the evaluation over the state-builder's view, outside any
    # market input. Its signal must still start the order's trace at the market tick.
    ticks = {
        "BTCUSDT": Tick("BTCUSDT", 1_700_000_000_000_000_000, "md-btc", "Trade"),
        "ETHUSDT": Tick("ETHUSDT", 1_700_000_000_100_000_000, "md-eth", "Trade"),
    }
    read = HotStateRead(1_700_000_000_200_000_000, 1_700_000_000_201_000_000, _hot_state)
    with evaluating(Evaluation(ticks, read)), signal_span("strategy", "trend", "BTCUSDT", "sig-1"):
        signal_headers = trace_headers()
    with remote_context(signal_headers), tracer("risk").start_as_current_span("risk.decision"):
        pass

    found = _by_name(spans)
    assert set(found) == {"market.tick", "state.hot_state", "strategy.signal", "risk.decision"}
    assert len({span.context.trace_id for span in found.values()}) == 1
    tick, hot_state, signal = found["market.tick"], found["state.hot_state"], found["strategy.signal"]
    assert tick.parent is None and tick.start_time == ticks["BTCUSDT"].ts_init_ns
    assert tick.attributes == {
        "bulwark.symbol": "BTCUSDT",
        "bulwark.message_id": "md-btc",
        "bulwark.market_data.type": "Trade",
    }
    assert hot_state.parent is not None and hot_state.parent.span_id == tick.context.span_id
    assert (hot_state.start_time, hot_state.end_time) == (read.started_ns, read.ended_ns)
    assert hot_state.attributes is not None and hot_state.attributes["peer.service"] == "state-builder"
    assert hot_state.attributes["bulwark.book.last_update_id"] == 42
    assert signal.parent is not None and signal.parent.span_id == tick.context.span_id
    assert signal.attributes is not None and signal.attributes["bulwark.signal_id"] == "sig-1"
    risk = found["risk.decision"]
    assert risk.parent is not None and risk.parent.span_id == signal.context.span_id


def test_signal_when_market_input_handled_during_evaluation_then_that_tick_wins(spans: InMemorySpanExporter) -> None:
    evaluation = Evaluation({"BTCUSDT": Tick("BTCUSDT", 1, "md-old")}, HotStateRead(2, 3))
    with (
        evaluating(evaluation),
        handling_tick(Tick("BTCUSDT", 5, "md-now")),
        signal_span("strategy", "trend", "BTCUSDT"),
    ):
        pass

    found = _by_name(spans)
    assert set(found) == {"market.tick", "strategy.signal"}  # the handled tick decided, not the view
    assert found["market.tick"].attributes is not None
    assert found["market.tick"].attributes["bulwark.message_id"] == "md-now"


def test_signal_when_evaluation_before_any_tick_of_its_symbol_then_its_own_trace(spans: InMemorySpanExporter) -> None:
    with evaluating(Evaluation({"ETHUSDT": Tick("ETHUSDT", 1, "md-eth")}, None)):
        with signal_span("strategy", "trend", "BTCUSDT"):
            pass
    with signal_span("strategy", "trend", "ETHUSDT"):  # after the evaluation: nothing left behind
        pass

    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == ["strategy.signal", "strategy.signal"]
    assert all(span.parent is None for span in finished)


def test_fill_when_order_not_remembered_then_a_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    traces = OrderTraces()
    with tracer("position").start_as_current_span("position.submit"):
        traces.remember("bw-known")
    with traces.span("position", "order.fill", "bw-unknown"):
        pass

    found = _by_name(spans)
    assert found["order.fill"].parent is None
    assert found["order.fill"].context.trace_id != found["position.submit"].context.trace_id


def test_order_span_when_attributes_given_then_named_like_the_others(spans: InMemorySpanExporter) -> None:
    with OrderTraces().span("position", "order.fill", "bw-1", via="user-stream"):
        pass

    (span,) = spans.get_finished_spans()
    assert span.attributes == {"bulwark.client_order_id": "bw-1", "bulwark.via": "user-stream"}


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


class _StateBuilder:
    """The bus of a strategy, as far as its periodic evaluation asks the state-builder."""

    async def request(self, subject: str, payload: bytes = b"", timeout_s: float = 1.0) -> bytes:
        book = SymbolHotState(symbol="BTCUSDT", hot_state=HotStateStatus.VALID, age_ms=7, last_update_id=42)
        return encode(SymbolsReply(symbols={"BTCUSDT": book}))


class _Runner:
    """A strategy runner whose strategy signals on every periodic evaluation (as a kind's entry does)."""

    def __init__(self, clock: ManualClock) -> None:
        self.active, self.clock, self.bus = True, clock, _StateBuilder()
        self.strategy = SimpleNamespace(state=StrategyState.SCANNING, depth_levels=0)
        self.log = get_logger("test")
        self.inputs: list[str] = []

    async def guarded(self, describe: object, fact: object) -> None:
        self.inputs.append(type(fact).__name__)
        self.clock.advance(0.01)
        if isinstance(fact, Ticked):
            with signal_span("strategy", "trend", "BTCUSDT", "sig-1"):  # what the publisher does
                pass


def test_strategy_service_when_evaluation_signals_then_trace_starts_at_latest_tick_with_view_read(
    spans: InMemorySpanExporter,
) -> None:
    clock = ManualClock(1_700_000_000_000_000_000)
    runner = _Runner(clock)
    service = StrategyService(runner)  # type: ignore[arg-type]
    trade = Trade(
        venue="binance-usdm",
        symbol="BTCUSDT",
        trade_id=1,
        price=Decimal(100),
        quantity=Decimal(1),
        buyer_is_maker=False,
        ts_init_ns=clock() - 5_000_000,
    )

    asyncio.run(service.handle(trade))  # the market input: nothing signalled on it
    asyncio.run(service.tick())  # the evaluation: it signals

    assert runner.inputs == ["Received", "Ticked"]
    found = _by_name(spans)
    assert set(found) == {"market.tick", "state.hot_state", "strategy.signal"}
    assert len({span.context.trace_id for span in found.values()}) == 1
    tick = found["market.tick"]
    assert tick.parent is None and tick.start_time == trade.ts_init_ns
    assert tick.attributes is not None and tick.attributes["bulwark.message_id"] == trade.message_id
    hot_state = found["state.hot_state"]
    assert hot_state.attributes is not None
    assert hot_state.attributes["bulwark.hot_state"] == "VALID"
    assert hot_state.attributes["bulwark.book.last_update_id"] == 42
    assert hot_state.attributes["bulwark.hot_state.age_ms"] == 7
    assert hot_state.start_time is not None and hot_state.start_time >= clock() - 20_000_000


class _JetStream:
    """What the bus hands JetStream: the headers of each publish."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> SimpleNamespace:
        self.headers.append(headers)
        return SimpleNamespace(seq=len(self.headers), duplicate=False)


def test_outbox_when_flushed_later_then_each_message_keeps_its_publishers_trace(spans: InMemorySpanExporter) -> None:
    # A message kept while the bus was down is sent by the flush task, in no trace of its own (or
    # in the one that scheduled it): it must still carry the trace it was published in.
    bus, jetstream = Bus("risk"), _JetStream()
    alert = AlertRaised(key="k", severity=AlertSeverity.P2, component="risk", title="t")
    trace_ids = []
    for name in ("first", "second"):
        with tracer("risk").start_as_current_span(name) as span:
            assert asyncio.run(bus.publish_buffered(subjects.EVT_ALERT_RAISED, alert)) is None  # down: kept
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))
    bus._js, bus.connected = jetstream, True  # type: ignore[assignment]  # the connection is back

    asyncio.run(bus._flush_outbox())

    assert [headers["traceparent"].split("-")[1] for headers in jetstream.headers] == trace_ids
