"""Asynchronous request-reply (RFC 7240 Prefer: respond-async, wait=N) on real processes:
202 with a Location any proxy answers, the result as the synchronous call would give it,
the async deadline apart from the synchronous one, and results private to their subject."""

from __future__ import annotations

import time

import pytest
import requests

from app.shared import contract
from tests.proxy.test_auth import AUDIENCE, SECRET, _token
from tests.support.processes import wait_until

pytestmark = pytest.mark.system

BODY = {"city": "Oslo", "location": "Norway"}


def submit(base_url: str, prefer: str, headers: dict[str, str] | None = None, body: dict | None = None,
           timeout: float = 15) -> requests.Response:
    return requests.post(base_url + "/WeatherForecast/city", json=body or BODY,
                         headers={"Prefer": prefer, **(headers or {})}, timeout=timeout)


def poll(base_url: str, location: str, headers: dict[str, str] | None = None, seconds: float = 20) -> requests.Response:
    """GET the result until it is no longer 202."""
    deadline = time.monotonic() + seconds
    while True:
        answer = requests.get(base_url + location, headers=headers or {}, timeout=5)
        if answer.status_code != 202 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_respond_async_answers_202_and_any_proxy_serves_the_result_after_the_first_is_gone(stack):
    first, other = stack.proxy(), stack.proxy()
    stack.worker("w", PROCESSING_DELAY_MS="300").wait_ready()
    first.wait_ready()
    other.wait_ready()

    accepted = submit(first.url, "respond-async")
    first.stop()
    body = accepted.json()
    result = poll(other.url, accepted.headers["Location"])

    assert accepted.status_code == 202
    assert accepted.headers["Preference-Applied"] == "respond-async"
    assert accepted.headers["Location"] == f"/WeatherForecast/requests/{body['id']}" == body["location"]
    assert int(accepted.headers["Retry-After"]) >= 1
    assert body["status"] == "queued"
    assert contract.result_key(body["id"]) is not None and len(body["id"].rpartition(".")[2]) == 32
    assert result.status_code == 200, result.text
    synchronous = other.ask("Oslo", "Norway").json()
    assert result.json().keys() == synchronous.keys()
    assert result.json()["city"] == "Oslo"


def test_wait_answers_200_when_the_work_is_fast_and_202_then_the_result_when_it_is_slow(stack):
    proxy = stack.proxy().wait_ready()
    worker = stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()

    fast = submit(proxy.url, "wait=5")
    worker.stop()
    slow_worker = stack.worker("slow", PROCESSING_DELAY_MS="2500", CLAIM_IDLE_SECONDS="10").wait_ready()
    started = time.monotonic()
    slow = submit(proxy.url, "wait=1")
    waited = time.monotonic() - started
    states = set()
    while (answer := requests.get(proxy.url + slow.headers["Location"], timeout=5)).status_code == 202:
        states.add(answer.json()["status"])
        time.sleep(0.05)

    assert fast.status_code == 200 and fast.json()["city"] == "Oslo"
    assert slow.status_code == 202 and 0.9 < waited < 2.0, waited
    assert "working" in states, states
    assert answer.status_code == 200 and answer.json()["city"] == "Oslo"
    assert slow_worker.alive()


def test_unknown_malformed_and_expired_ids_are_404_problems(stack):
    proxy = stack.proxy(RESULT_TTL_SECONDS="1").wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    done = submit(proxy.url, "respond-async")
    assert poll(proxy.url, done.headers["Location"]).status_code == 200

    time.sleep(1.5)
    for location in (done.headers["Location"], "/WeatherForecast/requests/" + "0" * 32,
                     "/WeatherForecast/requests/not-an-id", "/WeatherForecast/requests/s0-1." + "f" * 32):
        answer = requests.get(proxy.url + location, timeout=5)
        assert answer.status_code == 404, (location, answer.text)
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["error"] == "not_found"


def test_a_queued_async_request_outlives_the_synchronous_timeout_and_one_past_its_deadline_gets_504(stack):
    lasting = stack.proxy(REQUEST_TIMEOUT_SECONDS="1").wait_ready()
    short = stack.proxy(REQUEST_TIMEOUT_SECONDS="1", ASYNC_DEADLINE_SECONDS="1").wait_ready()
    kept = submit(lasting.url, "respond-async")
    dropped = submit(short.url, "respond-async")
    time.sleep(2.5)  # both past the synchronous timeout, the second past its async deadline too
    worker = stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()

    kept_result = poll(lasting.url, kept.headers["Location"])
    dropped_result = poll(lasting.url, dropped.headers["Location"])

    assert kept_result.status_code == 200, kept_result.text
    assert dropped_result.status_code == 504 and dropped_result.json()["error"] == "timeout", dropped_result.text
    wait_until(lambda: worker.metric("weather_worker_processed_total", {"outcome": "expired"}) == 1, 5,
               what="the late one counted as expired")


def test_async_is_ignored_when_turned_off(stack):
    proxy = stack.proxy(ASYNC_DEADLINE_SECONDS="0").wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()

    answer = submit(proxy.url, "respond-async")

    assert answer.status_code == 200 and "Preference-Applied" not in answer.headers


def test_only_the_subject_that_asked_reads_a_result(stack):
    proxy = stack.proxy(AUTH_JWT_ENABLED="true", AUTH_JWT_SECRET=SECRET, AUTH_JWT_AUDIENCE=AUDIENCE).wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    alice = {"Authorization": f"Bearer {_token(sub='alice')}"}
    bob = {"Authorization": f"Bearer {_token(sub='bob')}"}

    accepted = submit(proxy.url, "respond-async", alice)
    mine = poll(proxy.url, accepted.headers["Location"], alice)
    theirs = requests.get(proxy.url + accepted.headers["Location"], headers=bob, timeout=5)
    nobody = requests.get(proxy.url + accepted.headers["Location"], timeout=5)

    assert mine.status_code == 200
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    assert nobody.status_code == 401
