"""gunicorn configuration for the proxy, driven by the same settings as the app.

Settings are validated here, in the master, so a bad variable stops gunicorn at
once with a message naming it instead of crash-looping its workers.
"""

import os
import shutil
import tempfile
from typing import Any

from app.shared.logs import FORMATTER_KWARGS, LOG_FORMAT

# prometheus_client picks its storage when first imported, so the folder must be
# known before anything imports it. It is wiped at start: files of a previous run
# would be summed into this one.
_multiproc_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="proxy-metrics-")
)
# A folder inside a fresh tmpfs (compose's /tmp) does not exist yet.
os.makedirs(_multiproc_dir, exist_ok=True)

from gunicorn.glogging import Logger  # noqa: E402

from app.proxy.settings import ProxySettings  # noqa: E402
from app.shared.settings import load_settings_or_exit  # noqa: E402

_settings = load_settings_or_exit(ProxySettings)



class AppLogger(Logger):  # type: ignore[misc]
    """gunicorn builds every access-log line whenever a logging config is given, even
    when the access logger drops it; build them only when ACCESS_LOG is on."""

    def _compute_access_log_enabled(self) -> bool:
        return _settings.access_log


logger_class = AppLogger
wsgi_app = "app.proxy.wsgi:app"
bind = [f"{_settings.bind_host}:{_settings.port}"]
workers = _settings.web_concurrency
worker_class = "gevent"
worker_connections = _settings.worker_connections
# The listener greenlet and the reply stream belong to each worker process, so the
# app must be built after the fork.
preload_app = False
# A request waits at most its timeout; give in-flight ones that long to finish on SIGTERM.
graceful_timeout = int(_settings.request_timeout_seconds) + 5
keepalive = 5
# Small, fixed HTTP limits: the API takes one small JSON body.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn 23+ opens a control socket in $HOME: useless here, and it breaks a
# read-only root filesystem and several proxies on one host.
control_socket_disable = True
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": LOG_FORMAT,
            "static_fields": {"service": "proxy"},
            **FORMATTER_KWARGS,
        }
    },
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "root": {"level": _settings.log_level, "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level, "handlers": ["stdout"], "propagate": False},
        # One line per request is a lot at thousands of requests a second: opt in with ACCESS_LOG.
        "gunicorn.access": {
            "level": "INFO" if _settings.access_log else "CRITICAL", "handlers": ["stdout"], "propagate": False,
        },
    },
}


def on_starting(server: object) -> None:
    for name in os.listdir(_multiproc_dir):
        path = os.path.join(_multiproc_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def when_ready(server: object) -> None:
    # /metrics on a port of its own, served by the master from every worker's files: an
    # Ingress routes the API port only, so the metrics are never public.
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    GunicornPrometheusMetrics.start_http_server_when_ready(_settings.metrics_port, _settings.bind_host)


def child_exit(server: object, worker: Any) -> None:
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
