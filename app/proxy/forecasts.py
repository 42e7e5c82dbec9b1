"""The forecast API: GET /WeatherForecast answered here, POST /WeatherForecast/city by a worker."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.proxy.errors import ApiError, json_response
from app.proxy.roundtrip import RoundTrips
from app.shared import contract
from app.shared.local_forecast import five_day_forecast

MAX_BODY_BYTES = 64 * 1024


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


def forecast_routes(round_trips: RoundTrips) -> Blueprint:
    forecasts = Blueprint("forecasts", __name__)
    rng = random.Random()

    @forecasts.get("/WeatherForecast")
    def local_forecast() -> Response:
        return json_response(200, five_day_forecast(datetime.now(UTC).date(), rng))

    @forecasts.post("/WeatherForecast/city")
    def city_forecast() -> Response:
        with round_trips.admitted():
            city, location = parse_city_query()
            return json_response(200, round_trips.ask(city, location, g.subject, g.request_id))

    return forecasts
