"""GET /openapi.json and the Swagger UI at /docs, served from packaged files (no CDN:
a cluster may have no internet).

The UI comes from flask-swagger-ui's copy of Swagger UI 5, the first major version that
reads OpenAPI 3.1 (4.x shows "Unable to render this definition" for our spec). Only its
files are used: its blueprint renders an inline script, which a strict
Content-Security-Policy forbids.
"""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

docs = Blueprint("docs", __name__)

OPENAPI = resources.files("app.proxy").joinpath("openapi.json").read_bytes()
SWAGGER_UI_DIR = str(resources.files("flask_swagger_ui").joinpath("dist"))

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>redis-stream-demo API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""
# A separate script, not inline, so a strict Content-Security-Policy can forbid inline code.
INIT = b'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});\n'


@docs.get("/openapi.json")
def openapi() -> Response:
    return Response(OPENAPI, mimetype="application/json")


@docs.get("/docs")
def page() -> Response:
    return Response(PAGE, mimetype="text/html")


@docs.get("/docs/")
def page_with_slash() -> BaseResponse:
    return redirect("/docs", code=301)


@docs.get("/docs/init.js")
def init() -> Response:
    return Response(INIT, mimetype="text/javascript")


@docs.get("/docs/<any('swagger-ui.css', 'swagger-ui-bundle.js'):name>")
def asset(name: str) -> Response:
    return send_from_directory(SWAGGER_UI_DIR, name, max_age=3600)
