"""Redis clients for both services.

redis-py retries on its own by default. Both services switch that off so that one
policy (app.shared.resilience) decides how often and how long to retry, and the
circuit breaker sees every failure.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Every Redis command of the hot path answers in well under a millisecond; a
# socket that stays silent this long is a broken connection, not a slow server.
DEFAULT_SOCKET_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 2.0
# Readiness means Redis answers PING within this; both services probe the same way.
READINESS_PING_TIMEOUT_SECONDS = 0.5


def redis_client(
    url: str,
    *,
    client_name: str,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
    max_connections: int | None = None,
    **options: Any,
) -> redis.Redis:
    """A client with its own pool; bytes in, bytes out (entries may hold any bytes)."""
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(CONNECT_TIMEOUT_SECONDS, socket_timeout),
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        client_name=client_name,
        **options,
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}"
