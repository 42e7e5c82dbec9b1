"""Liveness and readiness of one proxy process, and the seed's GET /WeatherForecast/health."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import redis
from flask import Blueprint, Response

from app.proxy.errors import json_response
from app.proxy.replies import ReplyListener
from app.shared import contract
from app.shared.connections import READINESS_PING_TIMEOUT_SECONDS, failure_detail
from app.shared.loops import Loops
from app.shared.resilience import RedisGuard

HEALTH_PATH = "/WeatherForecast/health"

log = logging.getLogger("app.proxy")


class Readiness:
    """Ready = the breaker lets calls through, Redis answers a PING, replies are being read,
    and every background loop can run (app.shared.loops)."""

    def __init__(self, guard: RedisGuard, ping: Callable[[], None], listener: ReplyListener, loops: Loops,
                 username: str | None) -> None:
        self._username = username
        self._guard = guard
        self._ping = ping
        self._listener = listener
        self._loops = loops

    def check(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not self._guard.probe():
            return 503, {"status": "circuit_open"}, {"Retry-After": self._guard.retry_after_header()}
        try:
            with gevent.Timeout(READINESS_PING_TIMEOUT_SECONDS, redis.TimeoutError("ping timed out")):
                self._ping()
        except redis.RedisError as error:
            detail = failure_detail(error, self._username)
            if isinstance(error, redis.AuthenticationError):
                log.error("not ready: %s", detail)
            return 503, {"status": "redis_unavailable", "detail": detail}, {}
        if not self._listener.healthy:
            return 503, {"status": "reply_listener_down"}, {}
        if failing := self._loops.failing():
            return 503, {"status": "loop_failing", "loops": failing}, {}
        return 200, {"status": "ready"}, {}


def probe_routes(readiness: Readiness) -> Blueprint:
    probes = Blueprint("probes", __name__)

    @probes.get("/healthz")
    def healthz() -> Response:
        return json_response(200, {"status": "ok"})

    @probes.get("/readyz")
    def readyz() -> Response:
        return json_response(*readiness.check())

    @probes.get(HEALTH_PATH)
    def seed_health() -> Response:
        # The seed front's health answer, for its clients: readiness in its words.
        status, body, headers = readiness.check()
        answer = {"status": "Healthy" if status == 200 else "Unhealthy", "service": "proxy",
                  "time": contract.utc_timestamp()}
        if status != 200:
            answer["detail"] = body["status"]
        return json_response(status, answer, headers)

    return probes
