"""One JSON object per log line on stdout, with the request id where there is one."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from app.shared.tracing import trace_ids

# Greenlets (proxy) and threads (worker) each see their own value.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

LOG_FORMAT = "%(levelname)s %(name)s %(message)s"
FORMATTER_KWARGS: dict[str, Any] = {
    "rename_fields": {"levelname": "level", "name": "logger"},
    # ISO 8601 in UTC, under the key log shippers look for first.
    "timestamp": "time",
}


class RequestIdFilter(logging.Filter):
    """Adds the request id and, while tracing, the trace and span ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        for key, value in trace_ids().items():
            setattr(record, key, value)
        return True


def json_formatter() -> JsonFormatter:
    return JsonFormatter(LOG_FORMAT, **FORMATTER_KWARGS)


def configure_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(LOG_FORMAT, static_fields={"service": service}, **FORMATTER_KWARGS)
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
