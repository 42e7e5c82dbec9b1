"""OpenTelemetry tracing, off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER is set.

The W3C traceparent of the proxy's request span travels inside the stream entry, so
the worker's span continues the same trace. While tracing is off the API's no-op
tracer costs next to nothing and no traceparent is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace

log = logging.getLogger("app.tracing")

tracer = trace.get_tracer("redis-stream-demo")


def tracing_requested() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")) or exporter not in ("", "none")


def configure_tracing(service: str) -> bool:
    """Install an SDK tracer provider for this process when the environment asks for one."""
    if not tracing_requested():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*
    service_name = os.environ.get("OTEL_SERVICE_NAME", f"redis-stream-demo-{service}")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on", extra={"service_name": service_name})
    return True


def current_traceparent() -> str:
    """The W3C traceparent of the current span; empty while tracing is off (no propagation work)."""
    if not tracing_active():
        return ""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def server_span(name: str, headers: Mapping[str, str]) -> Iterator[trace.Span]:
    """The proxy's span of one HTTP request, continuing the caller's trace if it sent one."""
    with tracer.start_as_current_span(name, context=propagate.extract(headers),
                                      kind=trace.SpanKind.SERVER) as span:
        yield span


def tracing_active() -> bool:
    """True once a real tracer provider is installed (configure_tracing, or a test's own)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


@contextmanager
def consumer_span(name: str, traceparent: str) -> Iterator[trace.Span]:
    """The worker's span of one entry, a child of the proxy span that queued it."""
    if not tracing_active():
        # Even a no-op span costs context switching and propagation on every entry.
        yield trace.INVALID_SPAN
        return
    context = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(name, context=context, kind=trace.SpanKind.CONSUMER) as span:
        yield span


def trace_ids() -> dict[str, str]:
    """The current trace and span ids, for log lines; empty outside a recording span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
