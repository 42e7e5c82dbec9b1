"""Chaos 4: Redis stops answering (CLIENT PAUSE); the breaker opens and closes again."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.load import ask
from tests.support.processes import metric_value, wait_until

pytestmark = pytest.mark.system

THRESHOLD = 3
RESET_SECONDS = 2
PAUSE_MS = 7000


def _circuit(proxy) -> float:
    return metric_value(requests.get(proxy.metrics_url + "/metrics", timeout=2).text, "weather_proxy_circuit_state")


def test_breaker_opens_after_consecutive_failures_and_closes_after_recovery(stack):
    # One gunicorn process, so one breaker counts every failure.
    proxy = stack.proxy(WEB_CONCURRENCY="1", REQUEST_TIMEOUT_SECONDS="5",
                        CIRCUIT_FAILURE_THRESHOLD=str(THRESHOLD), CIRCUIT_RESET_SECONDS=str(RESET_SECONDS))
    worker = stack.worker("w", PROCESSING_DELAY_MS="0-10", CIRCUIT_RESET_SECONDS=str(RESET_SECONDS))
    proxy.wait_ready()
    worker.wait_ready()
    assert [ask(proxy.url, i, 5).status for i in range(5)] == [200] * 5
    assert _circuit(proxy) == 0

    stack.redis.client().execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    paused_until = time.monotonic() + PAUSE_MS / 1000

    slow_failures, states_before_threshold = [], []
    first_refusal = None
    for index in range(20):
        result = ask(proxy.url, 100 + index, 10)
        assert result.status == 503
        if result.body["error"] == "circuit_open":
            first_refusal = result
            break
        slow_failures.append(result)
        if len(slow_failures) < THRESHOLD:
            states_before_threshold.append(_circuit(proxy))
    refusals = [ask(proxy.url, 200 + i, 5) for i in range(5)]
    ready_while_open = requests.get(proxy.url + "/readyz", timeout=2)
    print(f"redis paused: slow 503s before opening={len(slow_failures)} "
          f"(each {min(r.seconds for r in slow_failures):.2f}-{max(r.seconds for r in slow_failures):.2f}s), "
          f"refusals={len(refusals) + 1} (max {max(r.seconds for r in refusals):.3f}s)")

    assert first_refusal is not None, "the breaker never opened"
    assert len(slow_failures) >= THRESHOLD
    assert states_before_threshold == [0] * (THRESHOLD - 1)
    # A caller waits about the retry budget (1 s), never its whole timeout.
    assert max(r.seconds for r in slow_failures) < 1.5
    assert all(r.status == 503 and r.body["error"] == "circuit_open" for r in refusals)
    assert max(r.seconds for r in refusals) < 0.2
    assert ready_while_open.status_code == 503
    assert ready_while_open.json()["status"] == "circuit_open"
    assert int(ready_while_open.headers["Retry-After"]) >= 1

    time.sleep(max(0.0, paused_until - time.monotonic()))
    wait_until(lambda: ask(proxy.url, 300, 5).status == 200, RESET_SECONDS + 5, interval=0.3,
               what="requests succeed again")
    assert _circuit(proxy) == 0
    assert requests.get(proxy.url + "/readyz", timeout=2).status_code == 200
    wait_until(lambda: worker.metric("weather_worker_circuit_state") == 0, RESET_SECONDS + 10, what="worker closed")
    log = proxy.log()
    assert '"to": "open"' in log and '"to": "closed"' in log
