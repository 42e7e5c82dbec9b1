"""The proxy's Flask application: HTTP in, a stream entry out, the reply back."""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

import gevent
import orjson
import redis
from flask import Flask, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.proxy import metrics
from app.proxy.auth import JwtAuthenticator
from app.proxy.docs import docs
from app.proxy.enqueue import Enqueuer
from app.proxy.errors import ApiError, json_response, register_error_handlers
from app.proxy.local_forecast import five_day_forecast
from app.proxy.ratelimit import install_rate_limit
from app.proxy.replies import ReplyListener
from app.proxy.roundtrip import ENQUEUE_SOCKET_TIMEOUT_SECONDS, RoundTrips
from app.proxy.settings import ProxySettings
from app.shared import contract
from app.shared.connections import READINESS_PING_TIMEOUT_SECONDS, RedisConnector
from app.shared.logs import configure_logging, request_id_var
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard
from app.shared.tracing import configure_tracing, server_span

log = logging.getLogger("app.proxy")

MAX_BODY_BYTES = 64 * 1024
UNPROBED_PATHS = ("/metrics", "/healthz", "/readyz", "/openapi.json", "/docs")
API_PREFIX = "/WeatherForecast"


def _require_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise ApiError(422, "validation_error", f"'{name}' is required")
    if not isinstance(value, str):
        raise ApiError(422, "validation_error", f"'{name}' must be a string")
    value = value.strip()
    if not value:
        raise ApiError(422, "validation_error", f"'{name}' must not be empty")
    if len(value) > contract.MAX_TEXT_LENGTH:
        raise ApiError(422, "validation_error", f"'{name}' must be at most {contract.MAX_TEXT_LENGTH} characters")
    return value


def _read_body() -> bytes:
    if request.content_length is not None:
        return request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH, before reading
    # A chunked body has no length up front; werkzeug would cut it at the limit
    # silently, so read one byte past the limit and refuse it here.
    raw: bytes = request.environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return raw


def parse_city_query() -> tuple[str, str]:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    raw = _read_body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object")
    return _require_text(body, "city"), _require_text(body, "location")


def _metrics_exporter(app: Flask) -> None:
    common: dict[str, Any] = {"group_by": "url_rule", "excluded_paths": list(UNPROBED_PATHS)}
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics(app, **common)
    else:  # a single process outside gunicorn (a shell, a debugger)
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, **common)


def create_app(settings: ProxySettings) -> Flask:
    configure_logging(settings.log_level, "proxy")
    tracing = configure_tracing("proxy")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    register_error_handlers(app)
    _metrics_exporter(app)

    host, pid = socket.gethostname(), os.getpid()
    reply_stream = contract.reply_stream_name(host, pid, secrets.token_hex(4))
    connector = RedisConnector(settings)
    ping_redis = connector.client(client_name=f"proxy-ready:{host}-{pid}",
                                  socket_timeout=READINESS_PING_TIMEOUT_SECONDS, max_connections=4)
    guard = RedisGuard(
        "proxy", settings.retry_policy, settings.circuit_failure_threshold, settings.circuit_reset_seconds,
        on_state=metrics.CIRCUIT_STATE.set, probe=ping_redis.ping,
    )
    enqueue_redis = connector.client(client_name=f"proxy:{host}-{pid}", max_connections=settings.redis_max_connections,
                                     socket_timeout=ENQUEUE_SOCKET_TIMEOUT_SECONDS)
    enqueuer = Enqueuer(enqueue_redis, guard, settings.request_streams,
                        ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms))
    authenticator = JwtAuthenticator(settings) if settings.auth_jwt_enabled else None
    listener = ReplyListener(
        connector.client(client_name=f"proxy-replies:{host}-{pid}", socket_timeout=10, max_connections=1),
        reply_stream, guard, settings.redis_reconnect_max_seconds,
    )
    listener.start()
    round_trips = RoundTrips(settings, enqueuer, listener, guard, tracing)
    rng = random.Random()
    log.info("proxy process started",
             extra={"reply_stream": reply_stream, "redis": connector.describe()})

    @app.before_request
    def _clear_request_id() -> None:
        # A kept-alive connection serves many requests in one greenlet.
        request_id_var.set(None)
        g.subject = ""
        if authenticator is not None and request.path.startswith(API_PREFIX):
            g.subject = authenticator.subject(request.headers.get("Authorization"))

    install_rate_limit(app, settings, connector, API_PREFIX)
    app.register_blueprint(docs)

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response(200, {"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        if not guard.probe():
            return json_response(503, {"status": "circuit_open"}, {"Retry-After": guard.retry_after_header()})
        try:
            with gevent.Timeout(READINESS_PING_TIMEOUT_SECONDS, redis.TimeoutError("ping timed out")):
                ping_redis.ping()
        except redis.RedisError as error:
            return json_response(503, {"status": "redis_unavailable", "detail": type(error).__name__})
        if not listener.healthy:
            return json_response(503, {"status": "reply_listener_down"})
        return json_response(200, {"status": "ready"})

    @app.get("/WeatherForecast")
    def local_forecast() -> Response:
        return json_response(200, five_day_forecast(datetime.now(UTC).date(), rng))

    @app.post("/WeatherForecast/city")
    def city_forecast() -> Response:
        if not tracing:
            return ask_worker()
        with server_span("POST /WeatherForecast/city", dict(request.headers)) as span:
            try:
                response = ask_worker()
            except ApiError as error:  # answered by the error handler; the span records the status
                span.set_attribute("http.response.status_code", error.status)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    def ask_worker() -> Response:
        round_trips.refuse_when_full()
        city, location = parse_city_query()
        return round_trips.ask(city, location, g.subject)

    return app
