"""X-Request-ID: a caller's id is kept end to end; anything else is replaced, never refused."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.processes import entries_of

pytestmark = pytest.mark.system

CITY_PATH = "/WeatherForecast/city"
GENERATED = re.compile(r"[0-9a-f]{32}")


def _ask(proxy, city: str, request_id: str | None = None) -> requests.Response:
    headers = {} if request_id is None else {"X-Request-ID": request_id}
    return requests.post(proxy.url + CITY_PATH, json={"city": city, "location": "Norway"}, headers=headers,
                         timeout=15)


@pytest.fixture
def proxy_and_worker(stack):
    worker = stack.worker("w1", LOG_LEVEL="DEBUG", WORKER_TERMINALS="20", PROCESSING_DELAY_MS="50-100")
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10")
    return proxy.wait_ready(), worker.wait_ready()


def test_a_valid_caller_id_is_the_request_id_everywhere(stack, proxy_and_worker):
    proxy, worker = proxy_and_worker
    caller_id = "checkout:7f3a-01.B_z"

    response = _ask(proxy, "Oslo", caller_id)

    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == caller_id
    assert response.json()["requestId"] == caller_id
    [(_, fields)] = entries_of(stack.redis.client())
    assert fields[b"id"] == caller_id.encode()
    worker_lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == caller_id and line["message"] == "replied" for line in worker_lines)
    proxy_lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    assert all(line.get("request_id") in (None, caller_id) for line in proxy_lines)


@pytest.mark.parametrize("bad_id", [
    "", "x" * 65, "has space", "semi;colon", "ümlaut", "new\tline", "{slot}",
], ids=["empty", "65-chars", "space", "semicolon", "non-ascii", "tab", "braces"])
def test_any_other_caller_id_is_replaced_by_a_generated_one(proxy_and_worker, bad_id):
    proxy, _ = proxy_and_worker

    response = requests.post(proxy.url + CITY_PATH, json={"city": "Oslo", "location": "Norway"},
                             headers={"X-Request-ID": bad_id.encode()}, timeout=15)

    assert response.status_code == 200
    generated = response.headers["X-Request-ID"]
    assert GENERATED.fullmatch(generated), generated
    assert response.json()["requestId"] == generated


def test_without_a_caller_id_one_is_generated_and_echoed(proxy_and_worker):
    proxy, _ = proxy_and_worker

    first, second = _ask(proxy, "Oslo"), _ask(proxy, "Bergen")

    assert GENERATED.fullmatch(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    assert first.json()["requestId"] == first.headers["X-Request-ID"]


def test_concurrent_requests_with_one_id_each_get_their_own_reply(stack, proxy_and_worker):
    proxy, _ = proxy_and_worker
    cities = [f"city-{i}" for i in range(40)]

    with ThreadPoolExecutor(max_workers=len(cities)) as pool:
        responses = list(pool.map(lambda city: _ask(proxy, city, "same-id"), cities))

    assert [r.status_code for r in responses] == [200] * len(cities)
    # Each caller got the forecast of the city it asked for, not a sibling's reply.
    assert [r.json()["city"] for r in responses] == cities
    assert {r.json()["requestId"] for r in responses} == {"same-id"}
    assert {r.headers["X-Request-ID"] for r in responses} == {"same-id"}
    entries = entries_of(stack.redis.client())
    assert len({fields[b"cid"] for _, fields in entries}) == len(cities)


def test_error_answers_carry_the_request_id_too(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1").wait_ready()  # no worker: the request times out

    response = _ask(proxy, "Oslo", "lost-one")

    assert response.status_code == 504
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["X-Request-ID"] == "lost-one"

