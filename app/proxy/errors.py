"""Every error the proxy answers is an RFC 9457 problem (application/problem+json):

    {"type": "urn:redis-stream-demo:problem:<code>", "title": ..., "status": ..., "detail": ...,
     "error": "<code>"}

`error` is an extension member holding the stable code clients branch on.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.proxy.failures import (
    InProgress,
    KeyReused,
    NoReply,
    Overloaded,
    QueueUnavailable,
    RoundTripFailure,
    Shed,
    WorkerFailed,
)

log = logging.getLogger("app.proxy")

PROBLEM_TYPE = "urn:redis-stream-demo:problem:"


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)


def problem_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": PROBLEM_TYPE + code, "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "error": code}
    return Response(orjson.dumps(body), status=status, mimetype="application/problem+json", headers=headers)


def api_error_response(error: ApiError) -> Response:
    return problem_response(error.status, error.error, error.detail, error.headers)


def failure_response(failure: RoundTripFailure) -> Response:
    """A round trip's failure as the problem the API documents for it."""
    if isinstance(failure, Overloaded):
        return problem_response(503, "overloaded", "this proxy holds as many requests as it may; try again",
                                {"Retry-After": "1"})
    if isinstance(failure, Shed):
        detail = f"{failure}; try again later"
        if failure.async_would_fit:
            detail += " or send it asynchronously (Prefer: respond-async), which would be accepted now"
        return problem_response(503, "over_capacity", detail, {"Retry-After": str(failure.retry_after)})
    if isinstance(failure, QueueUnavailable) and failure.breaker_open:
        return problem_response(503, "circuit_open", "Redis is failing; requests are refused until it recovers",
                                {"Retry-After": failure.retry_after})
    if isinstance(failure, QueueUnavailable) and failure.replicas_short:
        return problem_response(503, "replicas_unavailable",
                                "the Redis primaries this request may go to have fewer replicas online than "
                                "REDIS_WAIT_REPLICAS asks for, so none can confirm it; try again",
                                {"Retry-After": failure.retry_after})
    if isinstance(failure, QueueUnavailable):
        return problem_response(503, "redis_unavailable", "the request queue is unreachable; try again",
                                {"Retry-After": failure.retry_after})
    if isinstance(failure, NoReply):
        return problem_response(504, "timeout", f"{failure}; the request was dropped")
    if isinstance(failure, WorkerFailed):
        return problem_response(502, "worker_error", failure.detail)
    if isinstance(failure, KeyReused):
        return problem_response(422, "idempotency_key_reused",
                                "this Idempotency-Key was sent before with another body; use a new key")
    if isinstance(failure, InProgress):
        location = f"/WeatherForecast/requests/{failure.async_id}"
        return problem_response(409, "request_in_progress", f"{failure}; its result will be at {location}",
                                {"Retry-After": "1", "Location": location})
    raise failure


def _code(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return api_error_response(error)

    @app.errorhandler(RoundTripFailure)
    def _round_trip_failure(failure: RoundTripFailure) -> Response:
        return failure_response(failure)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        valid_methods = getattr(error, "valid_methods", None)
        headers = {"Allow": ", ".join(valid_methods)} if valid_methods else None
        return problem_response(status, _code(error.name), error.description or error.name, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "internal_error", "unexpected error; see the proxy log")
