"""Idempotency-Key on real processes: at most one execution per key and caller, the same
answer for every repeat, another body refused, a repeat after a timeout gets the late
result, and any proxy process finds the key."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.proxy.test_async import BODY, poll
from tests.proxy.test_auth import AUDIENCE, SECRET, _token
from tests.support.processes import wait_until

pytestmark = pytest.mark.system


def post(base_url: str, key: str, body: dict | None = None, headers: dict[str, str] | None = None,
         timeout: float = 20) -> requests.Response:
    return requests.post(base_url + "/WeatherForecast/city", json=body or BODY,
                         headers={"Idempotency-Key": key, **(headers or {})}, timeout=timeout)


def _entries(stack) -> int:
    client = stack.redis.client()
    return client.xlen("weather-requests") + client.xlen("weather-requests:urgent")


def test_fifty_concurrent_posts_with_one_key_are_one_execution_and_fifty_identical_answers(stack):
    proxies = [stack.proxy(), stack.proxy()]
    worker = stack.worker("w", PROCESSING_DELAY_MS="500").wait_ready()
    for proxy in proxies:
        proxy.wait_ready()

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda n: post(proxies[n % 2].url, "order-42"), range(50)))

    assert [answer.status_code for answer in answers] == [200] * 50, {a.text for a in answers}
    assert len({answer.content for answer in answers}) == 1
    assert _entries(stack) == 1
    assert worker.metric("weather_worker_processed_total") == 1


def test_a_retry_after_the_callers_timeout_gets_the_late_result_without_a_second_execution(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1").wait_ready()
    worker = stack.worker("w", PROCESSING_DELAY_MS="2000", CLAIM_IDLE_SECONDS="10").wait_ready()

    first = post(proxy.url, "retry-me")
    wait_until(lambda: worker.metric("weather_worker_processed_total") == 1, 10, what="the late work done")
    retry = post(proxy.url, "retry-me")

    assert first.status_code == 504
    assert retry.status_code == 200 and retry.json()["city"] == "Oslo"
    assert _entries(stack) == 1 and worker.metric("weather_worker_processed_total") == 1


def test_another_body_with_the_same_key_is_422_and_the_key_is_per_caller(stack):
    proxy = stack.proxy(AUTH_JWT_ENABLED="true", AUTH_JWT_SECRET=SECRET, AUTH_JWT_AUDIENCE=AUDIENCE).wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    alice = {"Authorization": f"Bearer {_token(sub='alice')}"}
    bob = {"Authorization": f"Bearer {_token(sub='bob')}"}
    nobody = {"Authorization": f"Bearer {_token(sub=None)}"}

    first = post(proxy.url, "k1", headers=alice)
    other_body = post(proxy.url, "k1", {"city": "Bergen", "location": "Norway"}, headers=alice)
    same_key_other_caller = post(proxy.url, "k1", {"city": "Bergen", "location": "Norway"}, headers=bob)
    without_subject = post(proxy.url, "k2", headers=nobody)
    bad_key = post(proxy.url, "x" * 256, headers=alice)

    assert first.status_code == 200
    assert other_body.status_code == 422 and other_body.json()["error"] == "idempotency_key_reused"
    assert same_key_other_caller.status_code == 200 and same_key_other_caller.json()["city"] == "Bergen"
    assert without_subject.status_code == 400 and without_subject.json()["error"] == "idempotency_needs_subject"
    assert bad_key.status_code == 400 and bad_key.json()["error"] == "invalid_idempotency_key"
    assert _entries(stack) == 2


def test_an_async_repeat_while_queued_is_409_then_gets_the_result(stack):
    proxy = stack.proxy().wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="1500", CLAIM_IDLE_SECONDS="10").wait_ready()
    prefer = {"Prefer": "respond-async"}

    accepted = post(proxy.url, "async-1", headers=prefer)
    repeat = post(proxy.url, "async-1", headers=prefer)
    result = poll(proxy.url, accepted.headers["Location"])
    time.sleep(0.1)
    done_repeat = post(proxy.url, "async-1", headers=prefer)

    assert accepted.status_code == 202
    assert repeat.status_code == 409 and repeat.json()["error"] == "request_in_progress"
    assert repeat.headers["Location"] == accepted.headers["Location"] and repeat.headers["Retry-After"]
    assert result.status_code == 200
    assert done_repeat.status_code == 200 and done_repeat.content == result.content
    assert _entries(stack) == 1


def test_a_key_stays_findable_while_the_shard_count_changes(stack):
    """A proxy on the new count finds a key written by a proxy on the old one (README:
    Changing the shard count); its repeat gets the first answer and runs nothing."""
    fast = {"SHARD_SET_ANNOUNCE_SECONDS": "0.5"}
    old = stack.proxy(REQUEST_STREAM_SHARDS="2", **fast).wait_ready()
    new = stack.proxy(REQUEST_STREAM_SHARDS="3", **fast).wait_ready()
    workers = [stack.worker("old", REQUEST_STREAM_SHARDS="2", PROCESSING_DELAY_MS="0", **fast).wait_ready(),
               stack.worker("new", REQUEST_STREAM_SHARDS="3", PROCESSING_DELAY_MS="0", **fast).wait_ready()]
    time.sleep(1.5)  # each proxy has read the other's announcement

    keys = [f"change-{n}" for n in range(6)]
    first = [post(old.url, key, {"city": key, "location": "x"}) for key in keys]
    repeats = [post(new.url, key, {"city": key, "location": "x"}) for key in keys]

    assert [answer.status_code for answer in first + repeats] == [200] * 12
    assert [answer.content for answer in repeats] == [answer.content for answer in first]
    assert sum(worker.metric("weather_worker_processed_total") for worker in workers) == 6


def test_a_repeat_whose_result_is_stored_is_answered_under_overload(stack):
    """Admission judged repeats before looking up their key: at 2.4x, 23 of 30 repeats of a
    key answered before the overload got 503 instead of the stored answer."""
    import asyncio

    from tools.load_runs import run_open_loop

    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="2").wait_ready()
    stack.worker("w", WORKER_TERMINALS="1", PROCESSING_DELAY_MS="200").wait_ready()
    first = post(proxy.url, "paid-once")
    assert first.status_code == 200
    for index in range(10):  # the worker learns its drain (5 a second)
        assert post(proxy.url, f"warm-{index}").status_code == 200
    time.sleep(1.5)

    def repeats() -> list[requests.Response]:
        time.sleep(1)  # the overload has begun
        answers = []
        for _ in range(20):
            answers.append(post(proxy.url, "paid-once"))
            time.sleep(0.1)
        return answers

    with ThreadPoolExecutor(1) as pool:
        repeated = pool.submit(repeats)
        flood = asyncio.run(run_open_loop(proxy.url, rate=20, count=None, timeout=5, duration=4))
        answers = repeated.result()

    assert any(sample.status == 503 for sample in flood.samples)  # new requests were refused
    assert [answer.status_code for answer in answers] == [200] * 20, {a.text for a in answers}
    assert {answer.content for answer in answers} == {first.content}
