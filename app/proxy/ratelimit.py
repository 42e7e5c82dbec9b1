"""Rate limiting with Flask-Limiter, counted in Redis so every proxy replica shares it.

Off unless RATE_LIMIT is set (e.g. "100/minute;10/second"). The client is the caller
admission shares the workers by (app.proxy.callers): the JWT subject, else CALLER_HEADER's
value, else the client address, honouring TRUSTED_PROXIES X-Forwarded-For hops. If Redis
cannot count, requests pass: the limiter must not turn a Redis hiccup into an outage of
its own.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask_limiter import HeaderNames, Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from app.proxy.callers import caller_of
from app.shared.topology import Topology


def trust_forwarded_for(app: Flask, trusted_proxies: int) -> None:
    """The client's address through that many proxies in front: the rate limiter's and the
    Idempotency-Key's caller when there is no subject."""
    if trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=trusted_proxies)  # type: ignore[method-assign]


def install_rate_limit(app: Flask, limit: str, topology: Topology,
                       is_limited: Callable[[], bool], caller_header: str = "") -> Limiter | None:
    if not limit:
        return None
    # A count that takes longer than half a second is given up on (swallow_errors lets the request in).
    storage_uri, storage_options = topology.limiter_storage()
    return Limiter(
        lambda: caller_of(caller_header),
        app=app,
        default_limits=[limit],
        default_limits_exempt_when=lambda: not is_limited(),
        storage_uri=storage_uri,
        storage_options=storage_options,
        strategy="moving-window",
        key_prefix="rsd-ratelimit",
        headers_enabled=True,
        # The IETF RateLimit header names, plus Retry-After on 429.
        header_name_mapping={
            HeaderNames.LIMIT: "RateLimit-Limit",
            HeaderNames.REMAINING: "RateLimit-Remaining",
            HeaderNames.RESET: "RateLimit-Reset",
        },
        swallow_errors=True,
    )
