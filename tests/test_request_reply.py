"""The whole round trip with several replicas of each service."""

from __future__ import annotations

import pytest

from tests.support.load import fire, summary

pytestmark = pytest.mark.system


def test_two_proxies_two_workers_answer_every_request_exactly_once(stack):
    proxies = [stack.proxy(REQUEST_TIMEOUT_SECONDS="20") for _ in range(2)]
    workers = [stack.worker(f"w{i}", PROCESSING_DELAY_MS="0-20", WORKER_TERMINALS="5") for i in range(2)]
    for process in [*proxies, *workers]:
        process.wait_ready()

    results = fire([proxy.url for proxy in proxies], count=400, concurrency=40)
    print(summary("round trip", results))

    assert [r.status for r in results] == [200] * 400, [r for r in results if r.status != 200][:3]
    for result in results:
        assert result.body["city"] == result.city
        assert result.body["location"] == f"loc-{result.index}"
        assert set(result.body) == {
            "city", "location", "forecastTime", "temperature", "condition", "humidity", "windSpeed", "requestId"
        }
    assert len({result.body["requestId"] for result in results}) == 400

    client = stack.redis.client()
    assert client.xpending("weather-requests", "weather-workers")["pending"] == 0
    processed = [worker.metric("weather_worker_processed_total", {"outcome": "ok"}) for worker in workers]
    assert sum(processed) == 400
    # Both workers took part: the group spreads entries, it does not hand them all to one.
    assert all(count > 0 for count in processed), processed
    # Every proxy process owns one reply stream, and each one is set to expire.
    reply_streams = list(client.scan_iter(match="weather-responses:*", _type="stream"))
    assert len(reply_streams) == 4
    for stream in reply_streams:
        assert 0 < client.ttl(stream) <= 120
