from __future__ import annotations

import pytest

from tests.support.processes import pending_entries, wait_until

pytestmark = pytest.mark.system


def test_request_without_worker_times_out_and_is_skipped_later(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1").wait_ready()

    response = proxy.ask("Oslo", "Norway")

    assert response.status_code == 504
    assert response.json()["error"] == "timeout"
    assert response.elapsed.total_seconds() < 5

    worker = stack.worker("late", PROCESSING_DELAY_MS="0").wait_ready()
    wait_until(lambda: worker.metric("weather_worker_processed_total", {"outcome": "expired"}) == 1, 10,
               what="expired request counted")
    assert worker.metric("weather_worker_processed_total", {"outcome": "ok"}) == 0
    client = stack.redis.client()
    assert pending_entries(client) == 0
    # Skipped means no reply was written for it.
    assert list(client.scan_iter(match="weather-responses:*")) == []
