"""The ceiling of the HTTP tier: a bare Flask echo served by the proxy's own gunicorn
configuration (gunicorn -c app/proxy/gunicorn.conf.py bench.echo_app:app)."""

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/WeatherForecast/city")
def echo() -> Response:
    return Response(request.get_data(), mimetype="application/json")


@app.get("/readyz")
def ready() -> Response:
    return Response(b'{"status": "ready"}', mimetype="application/json")
