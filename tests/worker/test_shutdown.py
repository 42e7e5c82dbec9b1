from __future__ import annotations

import json
import signal
import threading

import pytest

from tests.support.load import fire, summary
from tests.support.processes import pending_of, queues_of, wait_until

pytestmark = pytest.mark.system


def test_sigterm_finishes_in_flight_entries_and_leaves_nothing_pending(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="20")
    leaving = stack.worker("leaving", PROCESSING_DELAY_MS="300-500", WORKER_TERMINALS="5")
    staying = stack.worker("staying", PROCESSING_DELAY_MS="300-500", WORKER_TERMINALS="5")
    for process in (proxy, leaving, staying):
        process.wait_ready()

    results: list = []
    load = threading.Thread(target=lambda: results.extend(fire([proxy.url], count=80, concurrency=20)))
    load.start()
    active = wait_until(lambda: leaving.metric("weather_worker_terminals_active"), 10, what="leaving worker busy")
    leaving.signal(signal.SIGTERM)
    exit_code = leaving.wait(timeout=30)
    load.join(timeout=60)
    print(summary("sigterm", results), f"in flight at SIGTERM={active:g}")

    assert exit_code == 0
    assert active > 0
    assert [r.status for r in results] == [200] * 80
    stopped = [json.loads(line) for line in leaving.log().splitlines() if '"worker stopped"' in line]
    assert stopped and stopped[0]["unfinished_terminals"] == 0
    # Everything it held at SIGTERM was finished: replied and acknowledged.
    assert stopped[0]["processed"] >= active
    client = stack.redis.client()
    consumers = {c["name"].decode() for queue in queues_of() if client.exists(queue)
                 for c in client.xinfo_consumers(queue, "weather-workers")}
    assert "leaving" in consumers and pending_of(client, "leaving") == []
    assert staying.metric("weather_worker_processed_total", {"outcome": "ok"}) + stopped[0]["processed"] == 80
