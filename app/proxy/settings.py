"""The proxy's settings, read from the environment and validated at start."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from app.shared.settings import CommonSettings, Port


class ProxySettings(CommonSettings):
    port: Port = 8080
    request_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # gunicorn worker processes; each owns one reply stream and one listener.
    web_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    # Concurrent connections per gevent worker process.
    worker_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # Connections each proxy process may open to Redis for enqueuing (the listener has its own).
    redis_max_connections: Annotated[int, Field(ge=1, le=10_000)] = 200
    # One JSON log line per HTTP request (gunicorn's access log).
    access_log: bool = False
    # A caller is waiting: retry briefly, then answer 503 (never past the request's deadline).
    redis_retry_base_seconds: Annotated[float, Field(gt=0, le=10)] = 0.05
    redis_retry_max_seconds: Annotated[float, Field(gt=0, le=300)] = 1.0
