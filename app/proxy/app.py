"""The proxy's Flask application: HTTP in, a stream entry out, the reply back."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Any

from flask import Flask, Response, g, request

from app.proxy import metrics
from app.proxy.auth import JwtAuthenticator
from app.proxy.docs import docs
from app.proxy.enqueue import Enqueuer
from app.proxy.errors import register_error_handlers
from app.proxy.forecasts import MAX_BODY_BYTES, forecast_routes
from app.proxy.probes import HEALTH_PATH, Readiness, probe_routes
from app.proxy.ratelimit import install_rate_limit
from app.proxy.replies import ReplyListener
from app.proxy.roundtrip import ENQUEUE_SOCKET_TIMEOUT_SECONDS, RoundTrips
from app.proxy.settings import ProxySettings
from app.shared import contract
from app.shared.logs import configure_logging, request_id_var
from app.shared.runtime import redis_runtime
from app.shared.tracing import configure_tracing

log = logging.getLogger("app.proxy")

UNPROBED_PATHS = ("/metrics", "/healthz", "/readyz", HEALTH_PATH, "/openapi.json", "/docs")
API_PREFIX = "/WeatherForecast"


def _metrics_exporter(app: Flask) -> None:
    common: dict[str, Any] = {"group_by": "url_rule", "excluded_paths": list(UNPROBED_PATHS)}
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics(app, **common)
    else:  # a single process outside gunicorn (a shell, a debugger)
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, **common)


def is_api_call() -> bool:
    """Authenticated and rate limited: the API, but not its health answer (probes and dashboards call it)."""
    return request.path.startswith(API_PREFIX) and request.path != HEALTH_PATH


def create_app(settings: ProxySettings) -> Flask:
    configure_logging(settings.log_level, "proxy")
    tracing = configure_tracing("proxy")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    register_error_handlers(app)
    _metrics_exporter(app)

    host, pid = socket.gethostname(), os.getpid()
    reply_stream = contract.reply_stream_name(host, pid, secrets.token_hex(4))
    runtime = redis_runtime("proxy", f"{host}-{pid}", settings, metrics.CIRCUIT_STATE.set)
    topology, guard = runtime.topology, runtime.guard
    enqueue_redis = topology.client(client_name=f"proxy:{host}-{pid}", max_connections=settings.redis_max_connections,
                                    socket_timeout=ENQUEUE_SOCKET_TIMEOUT_SECONDS)
    enqueuer = Enqueuer(enqueue_redis, guard, settings.request_streams, runtime.replica_wait)
    authenticator = JwtAuthenticator(settings) if settings.auth_jwt_enabled else None
    listener = ReplyListener(
        topology.client(client_name=f"proxy-replies:{host}-{pid}", socket_timeout=10, max_connections=1),
        reply_stream, guard, settings.redis_reconnect_max_seconds,
    )
    listener.start()
    round_trips = RoundTrips(settings, enqueuer, listener, guard, tracing)
    log.info("proxy process started",
             extra={"reply_stream": reply_stream, "redis": topology.describe()})

    @app.before_request
    def _clear_request_id() -> None:
        # A kept-alive connection serves many requests in one greenlet.
        request_id_var.set(None)
        g.subject = ""
        if authenticator is not None and is_api_call():
            g.subject = authenticator.subject(request.headers.get("Authorization"))

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        # Set once the request has an id (the caller's or a generated one): answers and errors alike.
        request_id = request_id_var.get()
        if request_id is not None:
            response.headers["X-Request-ID"] = request_id
        return response

    install_rate_limit(app, settings.rate_limit, settings.trusted_proxies, topology, is_api_call)
    app.register_blueprint(docs)
    app.register_blueprint(probe_routes(Readiness(guard, runtime.ping_client, listener)))

    app.register_blueprint(forecast_routes(round_trips, tracing))

    return app
