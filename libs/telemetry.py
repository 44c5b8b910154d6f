"""OpenTelemetry set-up: one tracer provider per process; trace context travels in NATS headers.

The bus injects the current context into every publish (`traceparent`) and makes the context of a
delivered message current while its handler runs, so a span a handler starts is a child of the
span that published the message, in whatever process it ran. Spans are exported over OTLP when
`BULWARK_OTEL_ENDPOINT` is set, printed with `BULWARK_OTEL_EXPORTER=console`, and otherwise only
give log lines their `trace_id`.

One order is one trace: the strategy opens it with the market tick that triggered the signal
(`tick_span`), with the state-builder's hot state the decision read (`state.hot_state`) beside it,
risk decides inside it, position submits inside it, and the venue's answer and fill, which come
back over HTTP and the user stream rather than the bus, are joined to it through the order's
remembered context (`OrderTraces`).

A strategy decides on two kinds of input: a market message it is handling (`handling_tick`), and
its periodic evaluation over the state-builder's view (`evaluating`), where every built-in kind
enters and exits. The evaluation's signal is traced from the latest market input of its symbol,
so both kinds of signal start their trace at a market tick.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanContext, SpanKind
from opentelemetry.util.types import AttributeValue

OTLP_PROTOCOLS = ("http/protobuf", "grpc")

_state: dict[str, TracerProvider] = {}


def otlp_exporter(endpoint: str, protocol: str = "http/protobuf") -> SpanExporter:
    """The OTLP span exporter for a collector at `endpoint` (http/protobuf: `/v1/traces` added).

    Raises:
        ValueError: an unknown protocol.
    """
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    raise ValueError(f"OTLP protocol {protocol!r}: use one of {', '.join(OTLP_PROTOCOLS)}")


def setup_tracing(
    component: str, exporter: str = "none", *, endpoint: str = "", protocol: str = "http/protobuf"
) -> trace.Tracer:
    """Install the tracer provider (once per process) and return the component's tracer.

    Args:
        component: Service name, recorded as `service.name`.
        exporter: `none` (spans are created for context propagation only) or `console`.
        endpoint: OTLP collector URL; empty: nothing is exported over OTLP.
        protocol: `http/protobuf` or `grpc`.
    """
    if "provider" not in _state:
        provider = TracerProvider(resource=Resource.create({"service.name": component}))
        if exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        if endpoint:
            # Batched: a span costs the hot path a queue append, never a network round trip.
            provider.add_span_processor(BatchSpanProcessor(otlp_exporter(endpoint, protocol)))
        trace.set_tracer_provider(provider)
        _state["provider"] = provider
    return trace.get_tracer(component)


def add_span_processor(processor: SpanProcessor) -> None:
    """Also hand every span of this process to `processor` (tests: an in-memory exporter).

    Raises:
        RuntimeError: `setup_tracing` was not called in this process.
    """
    if "provider" not in _state:
        raise RuntimeError("setup_tracing first")
    _state["provider"].add_span_processor(processor)


def tracer(component: str) -> trace.Tracer:
    """The tracer of `component` (spans go nowhere before `setup_tracing`)."""
    return trace.get_tracer(component)


def trace_headers() -> dict[str, str]:
    """The current context as headers (`traceparent`), as the bus sends it."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextlib.contextmanager
def remote_context(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the context carried in `headers` current (as the bus does for a delivered message)."""
    token = otel_context.attach(propagate.extract(dict(headers)))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def tick_span(component: str, symbol: str, tick_ns: int, message_id: str, kind: str = "") -> Iterator[Span]:
    """The root span of an order's trace: the market tick that triggered a signal.

    It starts when market-data received the tick (`tick_ns`, its `ts_init_ns`) and ends when the
    strategy has published what it decided, so its length is the tick-to-signal latency. It is
    opened only for a tick that produced a signal, never for every tick, so tracing costs the
    market-data path nothing.
    """
    attributes = {"bulwark.symbol": symbol, "bulwark.message_id": message_id}
    if kind:
        attributes["bulwark.market_data.type"] = kind
    span = tracer(component).start_span("market.tick", start_time=tick_ns, attributes=attributes)
    with trace.use_span(span, end_on_exit=True):
        yield span


@dataclass(frozen=True)
class Tick:
    """The market input a strategy is handling: what a signal decided on it is traced back to."""

    symbol: str
    ts_init_ns: int
    message_id: str
    kind: str = ""
    """The message type (`Trade`, `Liquidation`, ...)."""


_current_tick: ContextVar[Tick | None] = ContextVar("bulwark_current_tick", default=None)


@contextlib.contextmanager
def handling_tick(tick: Tick) -> Iterator[None]:
    """Mark `tick` as the input being handled (a signal published meanwhile starts its trace there)."""
    token = _current_tick.set(tick)
    try:
        yield
    finally:
        _current_tick.reset(token)


def _no_attributes(symbol: str) -> Mapping[str, AttributeValue]:
    return {}


@dataclass(frozen=True)
class HotStateRead:
    """The state-builder's view a periodic evaluation decided on: when it was asked for and
    answered, and what it said of a symbol (`attributes(symbol)`: status, book update id, age),
    worked out only when a signal is traced."""

    started_ns: int
    ended_ns: int
    attributes: Callable[[str], Mapping[str, AttributeValue]] = _no_attributes


@dataclass(frozen=True)
class Evaluation:
    """What a strategy's periodic evaluation decides on: the latest market input of each symbol
    (`ticks`) and the hot state it read (`hot_state`, None when the state-builder did not answer)."""

    ticks: Mapping[str, Tick]
    hot_state: HotStateRead | None = None


_current_evaluation: ContextVar[Evaluation | None] = ContextVar("bulwark_current_evaluation", default=None)


@contextlib.contextmanager
def evaluating(evaluation: Evaluation) -> Iterator[None]:
    """Mark a periodic evaluation as running (a signal published meanwhile is traced from the
    latest market input of its symbol, with the hot state the evaluation read)."""
    token = _current_evaluation.set(evaluation)
    try:
        yield
    finally:
        _current_evaluation.reset(token)


def _hot_state_span(component: str, read: HotStateRead, symbol: str) -> None:
    """Record the read of the state-builder's view as a finished client span of the current trace."""
    attributes: dict[str, AttributeValue] = {"peer.service": "state-builder", "bulwark.symbol": symbol}
    attributes.update(read.attributes(symbol))
    span = tracer(component).start_span(
        "state.hot_state", kind=SpanKind.CLIENT, start_time=read.started_ns, attributes=attributes
    )
    span.end(end_time=max(read.started_ns, read.ended_ns))


@contextlib.contextmanager
def signal_span(component: str, strategy: str, symbol: str, signal_id: str = "") -> Iterator[Span]:
    """The span of publishing a signal, in the trace of the market tick that triggered it: the
    tick being handled (`handling_tick`), else in a periodic evaluation (`evaluating`) the latest
    market input of `symbol`, with the hot state the evaluation read. A root span when there is
    neither (an evaluation before any market input of the symbol)."""
    tick = _current_tick.get()
    evaluation = _current_evaluation.get() if tick is None else None
    if evaluation is not None:
        tick = evaluation.ticks.get(symbol)
    attributes = {"bulwark.strategy": strategy, "bulwark.symbol": symbol}
    if signal_id:
        attributes["bulwark.signal_id"] = signal_id
    if tick is None:
        with tracer(component).start_as_current_span("strategy.signal", attributes=attributes) as span:
            yield span
        return
    with tick_span(component, tick.symbol, tick.ts_init_ns, tick.message_id, tick.kind):
        if evaluation is not None and evaluation.hot_state is not None:
            _hot_state_span(component, evaluation.hot_state, symbol)
        with tracer(component).start_as_current_span("strategy.signal", attributes=attributes) as span:
            yield span


class OrderTraces:
    """The span context of each live order, by client order id, so that what comes back outside
    the bus (the venue's acknowledgement, fills on the user stream) joins the order's trace.

    Bounded: the oldest entries are forgotten beyond `limit` (a forgotten order's fill then starts
    a trace of its own rather than grow memory without end).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._contexts: OrderedDict[str, SpanContext] = OrderedDict()
        self._acknowledged: OrderedDict[str, int] = OrderedDict()

    def remember(self, client_order_id: str, span: Span | None = None) -> None:
        """Remember the current span (or `span`) as the parent of what comes later for the order."""
        context = (span or trace.get_current_span()).get_span_context()
        if not context.is_valid:
            return
        self._contexts[client_order_id] = context
        self._contexts.move_to_end(client_order_id)
        while len(self._contexts) > self.limit:
            self._contexts.popitem(last=False)

    def context(self, client_order_id: str) -> otel_context.Context | None:
        """The OpenTelemetry context whose span is the order's, None when not known."""
        span_context = self._contexts.get(client_order_id)
        if span_context is None:
            return None
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context))

    @contextlib.contextmanager
    def span(self, component: str, name: str, client_order_id: str, **attributes: str) -> Iterator[Span]:
        """A span of the order's trace (current while the block runs, so what it publishes carries it);
        `attributes` are recorded under `bulwark.` like every attribute of an order's spans."""
        parent = self.context(client_order_id)
        named = {f"bulwark.{key}": value for key, value in attributes.items()}
        with tracer(component).start_as_current_span(
            name, context=parent, attributes={"bulwark.client_order_id": client_order_id, **named}
        ) as span:
            yield span

    def acknowledged(self, client_order_id: str, at_ns: int) -> None:
        """The venue acknowledged the order at `at_ns` (the start of its ack-to-fill stage)."""
        self._acknowledged[client_order_id] = at_ns
        self._acknowledged.move_to_end(client_order_id)
        while len(self._acknowledged) > self.limit:
            self._acknowledged.popitem(last=False)

    def first_fill(self, client_order_id: str) -> int | None:
        """When the order was acknowledged, once: for its first fill (None after, or when not known)."""
        return self._acknowledged.pop(client_order_id, None)


order_traces = OrderTraces()
"""This process's orders (the position service's): one per process, like the tracer provider."""
