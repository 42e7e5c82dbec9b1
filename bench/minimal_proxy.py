"""The floor of a proxy's CPU per request: the echo's Flask route and gunicorn + gevent
configuration, plus the least a proxy over a stream must do: one XADD per request and one
blocking XREAD loop per process that wakes the waiting request by its id. No batching,
metrics, admission, deadlines, ids from headers, tracing or retries: what the real proxy is
measured against besides the echo (gunicorn -c app/proxy/gunicorn.conf.py bench.minimal_proxy:app,
with REDIS_URL; bench/minimal_worker.py answers it)."""

import os
import uuid
from typing import Any

import gevent
import orjson
import redis
from flask import Flask, Response, request
from gevent.event import AsyncResult

STREAM = "weather-requests"
app = Flask(__name__)
client = redis.Redis.from_url(os.environ["REDIS_URL"])
reply_stream = f"minimal-replies:{os.getpid()}"
waiting: dict[bytes, AsyncResult] = {}


def listen() -> None:
    last = b"0-0"  # the stream is this process's own, new with it
    while True:
        read: Any = client.xread({reply_stream: last}, count=500, block=1000)
        for _, entries in read or ():
            for entry_id, fields in entries:
                last = entry_id
                waiter = waiting.pop(fields[b"id"], None)
                if waiter is not None:
                    waiter.set(fields[b"body"])


gevent.spawn(listen)


@app.post("/WeatherForecast/city")
def city_forecast() -> Response:
    body = orjson.loads(request.get_data())
    request_id = uuid.uuid4().hex.encode()
    waiter = waiting[request_id] = AsyncResult()
    client.xadd(STREAM, {"id": request_id, "reply_to": reply_stream,
                         "body": orjson.dumps({"city": body["city"], "location": body["location"]})})
    return Response(waiter.get(timeout=30), mimetype="application/json")


@app.get("/readyz")
def ready() -> Response:
    return Response(b'{"status": "ready"}', mimetype="application/json")
