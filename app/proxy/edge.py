"""The proxy's HTTP edge: what every answer carries, whatever route or error produced it.

The request id is chosen first, before authentication, rate limiting and routing, so
that every answer carries ``X-Request-ID``: the 2xx, and the 400, 401, 404, 405, 413,
415, 422, 429 and 503 alike. Tracing, when on, wraps each API call in one server span.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, g, request
from opentelemetry import context, propagate, trace

from app.shared import contract
from app.shared.logs import request_id_var
from app.shared.tracing import tracer, tracing_active


@dataclass(frozen=True, slots=True)
class RequestId:
    """The id a request is known by. ``generated`` ids are unique; a caller's may not be."""

    value: str
    generated: bool


def choose_request_id(header: str | None) -> RequestId:
    """The caller's id when it is safe to log and echo; anything else is replaced, never refused."""
    if header is not None and contract.REQUEST_ID_PATTERN.fullmatch(header):
        return RequestId(header, generated=False)
    return RequestId(uuid.uuid4().hex, generated=True)


def install_request_ids(app: Flask) -> None:
    """Registered before every other hook of the app, so it runs first."""

    @app.before_request
    def _choose() -> None:
        g.request_id = choose_request_id(request.headers.get("X-Request-ID"))
        # A kept-alive connection serves many requests in one greenlet: set, never inherited.
        request_id_var.set(g.request_id.value)

    @app.after_request
    def _echo(response: Response) -> Response:
        request_id: RequestId | None = g.get("request_id")
        if request_id is not None:
            response.headers["X-Request-ID"] = request_id.value
        return response


def install_tracing(app: Flask, traced: Callable[[], bool]) -> None:
    """One server span per traced request, continuing the caller's trace (``traceparent``).
    Nothing is installed while tracing is off: no span machinery per request."""
    if not tracing_active():
        return

    @app.before_request
    def _start_span() -> None:
        if not traced():
            return
        rule = request.url_rule.rule if request.url_rule is not None else request.path
        span = tracer.start_span(f"{request.method} {rule}", context=propagate.extract(dict(request.headers)),
                                 kind=trace.SpanKind.SERVER)
        g.span = span
        g.span_token = context.attach(trace.set_span_in_context(span))

    @app.after_request
    def _record_status(response: Response) -> Response:
        span = g.get("span")
        if span is not None:
            span.set_attribute("http.response.status_code", response.status_code)
        return response

    @app.teardown_request
    def _end_span(_error: BaseException | None) -> None:
        span = g.pop("span", None)
        if span is not None:
            span.end()
            context.detach(g.pop("span_token"))
