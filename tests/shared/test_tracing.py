"""One trace across proxy and worker, through a real Redis entry."""

from __future__ import annotations

import logging
import random

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.shared import contract
from app.shared.logs import RequestIdFilter
from app.shared.runtime import redis_runtime
from app.shared.tracing import current_traceparent, server_span
from app.worker.delivery import Delivery
from app.worker.settings import WorkerSettings
from app.worker.worker import create_worker

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider():
    # The global provider can be set once per process; this module owns it.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    yield
    provider.shutdown()


@pytest.fixture(autouse=True)
def _clear_spans():
    _EXPORTER.clear()


def test_worker_span_continues_the_proxy_span(redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("PROCESSING_DELAY_MS", "0")
    client = redis_server.client()
    settings = WorkerSettings(consumer_name="traced")
    worker = create_worker(settings, client, redis_runtime("worker", "traced", settings, lambda _state: None))
    worker.ensure_groups()

    with server_span("POST /WeatherForecast/city", {}) as proxy_span:
        entry = contract.WeatherRequest("r1", "weather-responses:h:1:t", contract.now_ms() + 10_000,
                                        "Oslo", "Norway", traceparent=current_traceparent())
        client.xadd(settings.request_stream, entry.to_fields())
    [[_, [(entry_id, fields)]]] = client.xreadgroup(settings.consumer_group, "traced",
                                                    {settings.request_stream: ">"})
    worker.handler.handle(Delivery(settings.request_stream, entry_id, fields, 1), random.Random(1))

    spans = {span.name: span for span in _EXPORTER.get_finished_spans()}
    proxy, processed = spans["POST /WeatherForecast/city"], spans["process weather request"]
    assert entry.traceparent.split("-")[1] == format(proxy.context.trace_id, "032x")
    assert processed.context.trace_id == proxy.context.trace_id
    assert processed.parent.span_id == proxy_span.get_span_context().span_id
    assert processed.kind == trace.SpanKind.CONSUMER
    assert client.xlen("weather-responses:h:1:t") == 1


def test_without_a_span_no_traceparent_is_written():
    assert current_traceparent() == ""
    entry = contract.WeatherRequest("r", "weather-responses:h:1:t", 1, "a", "b", traceparent=current_traceparent())
    assert contract.FIELD_TRACEPARENT not in entry.to_fields()


def test_log_records_carry_the_trace_id():
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    with server_span("span", {}) as span:
        RequestIdFilter().filter(record)

    assert record.trace_id == format(span.get_span_context().trace_id, "032x")
    assert record.span_id == format(span.get_span_context().span_id, "016x")
