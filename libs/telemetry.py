"""OpenTelemetry set-up: one tracer provider per process; trace context travels in NATS headers."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

_configured: dict[str, bool] = {}


def setup_tracing(component: str, exporter: str = "none") -> trace.Tracer:
    """Install the tracer provider (once per process) and return the component's tracer.

    Args:
        component: Service name, recorded as `service.name`.
        exporter: `none` (spans are created for context propagation only) or `console`.
    """
    if not _configured.get("done"):
        provider = TracerProvider(resource=Resource.create({"service.name": component}))
        if exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
        _configured["done"] = True
    return trace.get_tracer(component)
