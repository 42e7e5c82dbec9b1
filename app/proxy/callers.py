"""Who a request's caller is: what the rate limiter counts and admission shares the workers by.

The JWT subject when there is one; else the value of a header the operator names
(CALLER_HEADER: an API key a gateway in front sets, never one a client could choose
unchecked); else the client address, through TRUSTED_PROXIES X-Forwarded-For hops.
"""

from __future__ import annotations

from flask import g, request
from flask_limiter.util import get_remote_address

# A header value longer than this is cut: a caller's name is a Redis hash field per second.
_LONGEST_NAME = 128


def caller_of(header: str = "") -> str:
    subject = getattr(g, "subject", "")
    if subject:
        return f"sub:{subject}"
    if header and (value := request.headers.get(header, "").strip()):
        return f"key:{value[:_LONGEST_NAME]}"
    return f"ip:{get_remote_address()}"
