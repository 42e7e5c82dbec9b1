from __future__ import annotations

import pytest
import requests

from tests.support.load import fire
from tests.support.processes import metric_value

pytestmark = pytest.mark.system


def test_one_scrape_counts_the_requests_of_every_gunicorn_worker(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10")
    worker = stack.worker("w", PROCESSING_DELAY_MS="5-20", WORKER_TERMINALS="10")
    proxy.wait_ready()
    worker.wait_ready()
    client = stack.redis.client()

    sent = 0
    # Keep going until both gunicorn worker processes have served requests (each owns a reply stream).
    while sent < 600:
        results = fire([proxy.url], count=60, concurrency=30, start=sent)
        assert all(result.status == 200 for result in results)
        sent += len(results)
        serving = [s for s in client.scan_iter(match="weather-responses:*", _type="stream") if client.xlen(s)]
        if len(serving) == 2:
            break
    assert len(serving) == 2, "one gunicorn worker served every request; aggregation was not exercised"

    exposition = requests.get(proxy.metrics_url + "/metrics", timeout=5).text
    # Never on the API port, which an Ingress routes.
    on_api_port = requests.get(proxy.url + "/metrics", timeout=5)

    assert metric_value(exposition, "flask_http_request_total", {"method": "POST", "status": "200"}) == sent
    assert metric_value(exposition, "weather_proxy_roundtrip_seconds_count", {"result": "ok"}) == sent
    assert metric_value(exposition, "weather_proxy_inflight_requests") == 0
    assert metric_value(exposition, "weather_proxy_timeouts_total") == 0
    assert on_api_port.status_code == 404
