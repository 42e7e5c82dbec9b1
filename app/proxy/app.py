"""The proxy's Flask application: HTTP in, a stream entry out, the reply back."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from functools import partial
from typing import Any

from flask import Flask, g, request

from app.proxy import metrics
from app.proxy.admission import Admission, AdmissionPolicy, AdmitEverything
from app.proxy.auth import JwtAuthenticator
from app.proxy.docs import docs
from app.proxy.edge import install_request_ids, install_tracing
from app.proxy.enqueue import Enqueuer
from app.proxy.errors import register_error_handlers
from app.proxy.fairness import CallerShares
from app.proxy.forecasts import MAX_BODY_BYTES, forecast_routes
from app.proxy.horizon import Horizon
from app.proxy.once import OnceEnqueuer
from app.proxy.probes import HEALTH_PATH, Readiness, probe_routes
from app.proxy.ratelimit import install_rate_limit, trust_forwarded_for
from app.proxy.replicas import ReplicaWatch
from app.proxy.replies import BLOCK_MS, ReplyListener
from app.proxy.results import Results
from app.proxy.roundtrip import ENQUEUE_SOCKET_TIMEOUT_SECONDS, RoundTrips
from app.proxy.settings import ProxySettings
from app.proxy.shards import ShardHealth
from app.shared import contract
from app.shared.connections import spare_readiness_checks_a_hub_turn
from app.shared.logs import configure_logging
from app.shared.loops import Loops
from app.shared.replication import ReplicaWait
from app.shared.routing import NodeWriter
from app.shared.runtime import redis_runtime
from app.shared.shard_sets import Announcer, ShardSetRegistry
from app.shared.tracing import configure_tracing

log = logging.getLogger("app.proxy")

UNPROBED_PATHS = ("/metrics", "/healthz", "/readyz", HEALTH_PATH, "/openapi.json", "/docs")
API_PREFIX = "/WeatherForecast"


def _metrics_exporter(app: Flask) -> None:
    common: dict[str, Any] = {"group_by": "url_rule", "excluded_paths": list(UNPROBED_PATHS)}
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Recorded here, served by gunicorn's master on METRICS_PORT (gunicorn.conf.py).
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        GunicornPrometheusMetrics(app, **common)
    else:  # a single process outside gunicorn (a shell, a debugger)
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, **common)


def is_api_call() -> bool:
    """Authenticated and rate limited: the API, but not its health answer (probes and dashboards call it)."""
    return request.path.startswith(API_PREFIX) and request.path != HEALTH_PATH


def create_app(settings: ProxySettings) -> Flask:
    configure_logging(settings.log_level, "proxy")
    spare_readiness_checks_a_hub_turn()
    configure_tracing("proxy")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # First of the hooks, so that every answer carries the request id and the span sees it all.
    install_request_ids(app)
    install_tracing(app, is_api_call)
    register_error_handlers(app)
    _metrics_exporter(app)

    host, pid = socket.gethostname(), os.getpid()
    reply_streams = contract.reply_streams(settings.request_streams, host, pid, secrets.token_hex(4))
    runtime = redis_runtime("proxy", f"{host}-{pid}", settings, metrics.CIRCUIT_STATE.set)
    topology, guard = runtime.topology, runtime.guard
    enqueue_redis = topology.client(client_name=f"proxy:{host}-{pid}", max_connections=settings.redis_max_connections,
                                    socket_timeout=ENQUEUE_SOCKET_TIMEOUT_SECONDS)
    loops = Loops(lambda name: metrics.LOOP_RESTARTS.labels(name).inc())
    registry = ShardSetRegistry(enqueue_redis, settings.request_stream, topology.hash_tagged)
    announcer = Announcer(registry, settings.request_stream_shards, settings.shard_set_announce_seconds).start(loops)
    writer = NodeWriter(topology, enqueue_redis, runtime.replica_wait)
    shards = ShardHealth(settings.request_streams)
    replica_watch = ReplicaWatch(topology, enqueue_redis, shards, settings.redis_wait_replicas).start(loops) \
        if settings.redis_wait_replicas else None
    enqueuer = Enqueuer(writer, guard, shards, reply_streams, resend_unknown=topology.shards_span_nodes,
                        on_replicas_behind=replica_watch.check_soon if replica_watch else lambda: None)
    once = OnceEnqueuer(enqueuer, writer, lambda: [registry.streams(count) for count in announcer.other_counts()])
    authenticator = JwtAuthenticator(
        settings.jwt_key(), list(settings.auth_jwt_algorithms), audience=settings.auth_jwt_audience,
        issuer=settings.auth_jwt_issuer, leeway_seconds=settings.auth_jwt_leeway_seconds,
    ) if settings.auth_jwt_enabled else None
    reading_groups = topology.read_together(list(reply_streams.values()))
    reply_redis = topology.client(client_name=f"proxy-replies:{host}-{pid}", longest_block_ms=BLOCK_MS,
                                  max_connections=len(reading_groups) + 1)
    listener = ReplyListener(reply_redis, reply_streams, reading_groups,
                             partial(topology.ping_node_of, reply_redis),
                             guard, settings.redis_reconnect_max_seconds)
    listener.start()
    horizon = Horizon(enqueue_redis, settings.request_stream, timeout_ms=int(settings.request_timeout_seconds * 1000),
                      async_deadline_ms=int(max(settings.async_deadline_seconds,
                                                settings.request_timeout_seconds) * 1000)).start(loops)
    results = Results(enqueue_redis, guard)
    # Its own connections: its reads never wait behind the enqueue path's writes for one.
    admission_redis = topology.client(client_name=f"proxy-admission:{host}-{pid}", max_connections=2,
                                      socket_timeout=ENQUEUE_SOCKET_TIMEOUT_SECONDS)
    admission = Admission(
        NodeWriter(topology, admission_redis, ReplicaWait(0, 0)), settings.request_streams,
        contract.drain_key(settings.request_stream), settings.consumer_group,
        AdmissionPolicy(settings.admission_wait_share, settings.admission_standing_share,
                        settings.admission_cold_backlog),
        CallerShares(settings.request_stream, settings.priority_trusted_callers),
        on_frozen=writer.reconnect,
    ).start(loops) if settings.admission_enabled else AdmitEverything()
    round_trips = RoundTrips(enqueuer, once, listener, guard, horizon, results, admission,
                             timeout_seconds=settings.request_timeout_seconds,
                             retry_max_seconds=settings.redis_retry_max_seconds,
                             max_inflight=settings.max_inflight_per_process,
                             async_deadline_seconds=settings.async_deadline_seconds,
                             result_ttl_seconds=settings.result_ttl_seconds,
                             idempotency_ttl_seconds=settings.idempotency_ttl_seconds)
    log.info("proxy process started",
             extra={"reply_streams": sorted(reply_streams.values()), "redis": topology.describe()})

    @app.before_request
    def _authenticate() -> None:
        g.subject = ""
        if authenticator is not None and is_api_call():
            g.subject = authenticator.subject(request.headers.get("Authorization"))

    trust_forwarded_for(app, settings.trusted_proxies)
    install_rate_limit(app, settings.rate_limit, topology, is_api_call, settings.caller_header)
    if settings.docs_enabled:
        app.register_blueprint(docs)
    app.register_blueprint(probe_routes(Readiness(guard, runtime.ping, listener, loops, settings.redis_username)))

    app.register_blueprint(forecast_routes(round_trips, results, authenticated=authenticator is not None,
                                           caller_header=settings.caller_header))

    return app
