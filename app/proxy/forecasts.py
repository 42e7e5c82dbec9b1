"""The forecast API: GET /WeatherForecast answered here, POST /WeatherForecast/city by a worker."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.proxy import idempotency
from app.proxy.callers import caller_of
from app.proxy.errors import ApiError, failure_response, json_response
from app.proxy.failures import NoReply, WorkerFailed
from app.proxy.prefer import parse_prefer
from app.proxy.priority import parse_urgency
from app.proxy.results import Results
from app.proxy.roundtrip import Accepted, RoundTrips
from app.shared import contract
from app.shared.local_forecast import five_day_forecast

MAX_BODY_BYTES = 64 * 1024
REQUESTS_PATH = "/WeatherForecast/requests"
# How soon a caller should poll a pending async request again.
POLL_AFTER_SECONDS = 1


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


def _pending(async_id: str, state: str, age_seconds: float, headers: dict[str, str] | None = None) -> Response:
    """202: the request is queued or in work; its result will be at Location."""
    location = f"{REQUESTS_PATH}/{async_id}"
    body = {"id": async_id, "status": state, "age_seconds": round(age_seconds, 3), "location": location}
    return json_response(202, body, {"Location": location, "Retry-After": str(POLL_AFTER_SECONDS), **(headers or {})})


def forecast_routes(round_trips: RoundTrips, results: Results, *, authenticated: bool,
                    caller_header: str = "") -> Blueprint:
    forecasts = Blueprint("forecasts", __name__)
    rng = random.Random()

    @forecasts.get("/WeatherForecast")
    def local_forecast() -> Response:
        return json_response(200, five_day_forecast(datetime.now(UTC).date(), rng))

    @forecasts.post("/WeatherForecast/city")
    def city_forecast() -> Response:
        preferences = parse_prefer(request.headers.getlist("Prefer"))
        urgency = parse_urgency(request.headers.getlist("Priority"))
        key = request.headers.get(idempotency.HEADER)
        if key is not None and authenticated and not g.subject:
            raise ApiError(400, "idempotency_needs_subject",
                           f"{idempotency.HEADER} needs a token with a subject (sub): keys are scoped per caller")
        fingerprint = None if key is None else idempotency.fingerprint(key, g.subject, request.remote_addr or "")
        caller = caller_of(caller_header)
        with round_trips.admitted():
            city, location = parse_city_query()
            if fingerprint is not None:
                answer = round_trips.once(city, location, g.subject, g.request_id, preferences, fingerprint,
                                          idempotency.body_hash(city, location), urgency, caller)
            elif not (preferences.pollable and round_trips.async_enabled):
                return json_response(200, round_trips.ask(city, location, g.subject, g.request_id, urgency, caller))
            else:
                answer = round_trips.accept(city, location, g.subject, g.request_id, preferences, urgency, caller)
        if isinstance(answer, Accepted):
            return _pending(answer.async_id, contract.STATE_QUEUED, 0.0,
                            {"Preference-Applied": "respond-async"})
        return json_response(200, answer)

    @forecasts.get(f"{REQUESTS_PATH}/<async_id>")
    def async_result(async_id: str) -> Response:
        record = results.find(async_id, g.subject)
        if record is None:
            raise ApiError(404, "not_found", "no such request: unknown, expired, or not yours")
        if record.reply is None:
            return _pending(async_id, record.state, record.age_seconds(contract.now_ms()))
        if record.reply.ok:
            return json_response(200, record.reply.body)
        # The problem the synchronous call would have answered.
        if record.reply.body.get("error") == contract.ERROR_EXPIRED:
            return failure_response(NoReply(round_trips.async_deadline_seconds))
        return failure_response(WorkerFailed(str(record.reply.body.get("detail", "the worker could not process it"))))

    return forecasts
