"""python -m app.worker"""

from __future__ import annotations

# Terminals, the reader and the reply sender are greenlets: one OS thread, no GIL
# hand-offs between them, and a terminal costs a few kilobytes instead of a thread.
# The work they stand for waits on I/O; CPU-bound work wants more worker processes.
from gevent import monkey

monkey.patch_all()

import logging
import signal
import sys

from app.shared.connections import spare_readiness_checks_a_hub_turn
from app.shared.logs import configure_logging
from app.shared.runtime import redis_runtime
from app.shared.settings import ConfigError, load_settings_or_exit
from app.shared.tracing import configure_tracing
from app.worker import metrics
from app.worker.health import HealthApp, HealthServer
from app.worker.settings import WorkerSettings
from app.worker.worker import create_worker


def main() -> int:
    try:
        settings = load_settings_or_exit(WorkerSettings)
    except ConfigError as error:
        return int(error.code or 2)
    configure_logging(settings.log_level, "worker")
    spare_readiness_checks_a_hub_turn()
    configure_tracing("worker")
    log = logging.getLogger("app.worker")
    name = settings.consumer_name
    runtime = redis_runtime("worker", name, settings, metrics.CIRCUIT_STATE.set)
    client = runtime.topology.client(
        client_name=f"worker:{name}",
        longest_block_ms=settings.read_block_ms,
        max_connections=settings.worker_terminals + 4,
    )
    worker = create_worker(settings, client, runtime)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        health_app = HealthApp(worker, runtime.ping, settings.read_block_ms, settings.redis_username)
        health = HealthServer(settings.bind_host, settings.metrics_port, health_app).start()
    except OSError as error:
        log.error("cannot serve health and metrics", extra={"port": settings.metrics_port, "error": str(error)})
        return 1
    log.info("connecting", extra={"redis": runtime.topology.describe()})
    worker.run()
    health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
