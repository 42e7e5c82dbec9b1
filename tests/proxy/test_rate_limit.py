"""The rate limit is counted in Redis, so two proxy replicas share it."""

from __future__ import annotations

import pytest
import requests

from tests.support.sentinel import SENTINEL_URL

pytestmark = pytest.mark.system


def test_two_proxies_enforce_one_combined_limit(stack):
    proxies = [stack.proxy(RATE_LIMIT="20/minute", REQUEST_TIMEOUT_SECONDS="10") for _ in range(2)]
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    for proxy in proxies:
        proxy.wait_ready()

    responses = [proxies[i % 2].ask(f"city-{i}", "x") for i in range(30)]

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20
    assert statuses.count(429) == 10
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"] == "too_many_requests"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Limit"] == "20"
    assert limited.headers["RateLimit-Remaining"] == "0"
    allowed = next(r for r in responses if r.status_code == 200)
    assert "RateLimit-Remaining" in allowed.headers
    # Probes and metrics are never limited.
    assert all(requests.get(proxies[0].url + "/healthz", timeout=5).status_code == 200 for _ in range(25))


def test_in_sentinel_mode_the_limit_is_counted_on_the_primary(stack, sentinels):
    proxy = stack.proxy(RATE_LIMIT="5/minute", REQUEST_TIMEOUT_SECONDS="10", REDIS_URL=SENTINEL_URL,
                        **sentinels.env()).wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0", REDIS_URL=SENTINEL_URL, **sentinels.env()).wait_ready()

    statuses = [proxy.ask(f"city-{i}", "x").status_code for i in range(8)]

    assert statuses == [200] * 5 + [429] * 3
    assert any(b"rsd-ratelimit" in key for key in sentinels.primary.client().scan_iter())


def test_without_redis_the_limiter_lets_requests_through_to_a_clean_503(stack):
    proxy = stack.proxy(RATE_LIMIT="20/minute", REQUEST_TIMEOUT_SECONDS="5").wait_ready()
    stack.redis.stop()

    response = proxy.ask("Oslo", "Norway")

    assert response.status_code == 503
    assert response.json()["error"] in ("redis_unavailable", "circuit_open")


def test_on_a_redis_cluster_the_limit_is_counted_in_the_cluster(cluster_stack, redis_cluster):
    proxies = [cluster_stack.proxy(RATE_LIMIT="6/minute", REQUEST_TIMEOUT_SECONDS="10") for _ in range(2)]
    cluster_stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    for proxy in proxies:
        proxy.wait_ready()

    statuses = [proxies[i % 2].ask(f"city-{i}", "x").status_code for i in range(9)]

    assert statuses.count(200) == 6
    assert statuses.count(429) == 3
    assert any(node.client().keys("*rsd-ratelimit*") for node in redis_cluster.nodes)
