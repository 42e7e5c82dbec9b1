"""The worker's small HTTP server on METRICS_PORT: /healthz, /readyz, /metrics, and the seed
worker's own GET /WeatherForecast (five local forecasts) and GET /WeatherForecast/status."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
import redis
from prometheus_client import make_wsgi_app

from app.shared import contract
from app.shared.connections import failure_detail
from app.shared.local_forecast import five_day_forecast
from app.worker.worker import Worker

log = logging.getLogger("app.worker")


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds
        pass


def _json(start_response: Callable[..., Any], status: str, body: object) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [orjson.dumps(body)]


class HealthApp:
    def __init__(self, worker: Worker, ping: Callable[[], None], read_block_ms: int, username: str | None) -> None:
        self._username = username
        self._worker = worker
        self._ping = ping
        self._metrics = make_wsgi_app()
        # The reader loop ticks at least every read block; far longer means it is wedged.
        self._stall_seconds = read_block_ms / 1000 + 30
        self._rng = random.Random()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            exposition: Iterable[bytes] = self._metrics(environ, start_response)
            return exposition
        if path == "/healthz":
            stalled = time.monotonic() - self._worker.last_loop_monotonic > self._stall_seconds
            if stalled and not self._worker.stopping:
                return _json(start_response, "503 Service Unavailable", {"status": "stalled"})
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            return self._ready(start_response)
        if path == "/WeatherForecast":
            return _json(start_response, "200 OK", five_day_forecast(datetime.now(UTC).date(), self._rng))
        if path == "/WeatherForecast/status":
            return self._status(start_response)
        return _json(start_response, "404 Not Found", {"error": "not_found", "detail": path})

    def _status(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        stopping = self._worker.stopping
        body = {"status": "Stopping" if stopping else "Running", "service": "worker",
                "consumer": self._worker.consumer,
                "time": contract.utc_timestamp()}
        return _json(start_response, "503 Service Unavailable" if stopping else "200 OK", body)

    def _ready(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._worker.stopping:
            return _json(start_response, "503 Service Unavailable", {"status": "stopping"})
        if not self._worker.guard.probe():
            return _json(start_response, "503 Service Unavailable", {"status": "circuit_open"})
        try:
            self._ping()
        except redis.RedisError as error:
            detail = failure_detail(error, self._username)
            if isinstance(error, redis.AuthenticationError):
                log.error("not ready: %s", detail)
            return _json(start_response, "503 Service Unavailable", {"status": "redis_unavailable", "detail": detail})
        if not self._worker.groups_ready:
            return _json(start_response, "503 Service Unavailable", {"status": "starting"})
        if failing := self._worker.loops.failing():
            return _json(start_response, "503 Service Unavailable", {"status": "loop_failing", "loops": failing})
        return _json(start_response, "200 OK", {"status": "ready"})


class HealthServer:
    def __init__(self, host: str, port: int, app: HealthApp) -> None:
        self._server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
