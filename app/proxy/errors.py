"""Every error the proxy answers is JSON: {"error": <code>, "detail": <text>}."""

from __future__ import annotations

import logging
import re

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger("app.proxy")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)


def _code(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return json_response(error.status, {"error": error.error, "detail": error.detail}, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        valid_methods = getattr(error, "valid_methods", None)
        headers = {"Allow": ", ".join(valid_methods)} if valid_methods else None
        return json_response(status, {"error": _code(error.name), "detail": error.description}, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return json_response(500, {"error": "internal_error", "detail": "unexpected error; see the proxy log"})
