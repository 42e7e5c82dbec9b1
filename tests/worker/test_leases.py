"""Work longer than CLAIM_IDLE_SECONDS is done once while its worker lives, and a dead
worker's entries are still claimed and answered (at-least-once holds)."""

from __future__ import annotations

import signal
import threading

import pytest

from tests.support.load import fire
from tests.support.processes import pending_entries, wait_until

pytestmark = pytest.mark.system

SLOW = {"PROCESSING_DELAY_MS": "3000", "CLAIM_IDLE_SECONDS": "1", "WORKER_TERMINALS": "50",
        "SHUTDOWN_GRACE_SECONDS": "5"}


def _processed(workers) -> float:
    return sum(worker.metric("weather_worker_processed_total") for worker in workers if worker.alive())


def test_work_three_times_longer_than_the_claim_idle_time_is_done_once(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="30").wait_ready()
    workers = [stack.worker(name, **SLOW).wait_ready() for name in ("a", "b")]

    results = fire([proxy.url], count=100, concurrency=100, timeout=30)
    wait_until(lambda: all(w.metric("weather_worker_terminals_active") == 0 for w in workers), 10,
               what="every terminal idle (a second execution finished too)")

    assert [r.status for r in results] == [200] * 100
    assert _processed(workers) == 100, "an entry in work was claimed by the other worker and done twice"
    assert sum(worker.metric("weather_worker_claimed_total") for worker in workers) == 0
    assert all(worker.metric("weather_worker_leases_renewed_total") > 0 for worker in workers)
    assert pending_entries(stack.redis.client()) == 0


def test_a_dead_workers_entries_are_still_claimed_and_answered(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="30").wait_ready()
    doomed = stack.worker("doomed", **SLOW).wait_ready()

    with_answers = []
    sender = threading.Thread(target=lambda: with_answers.extend(fire([proxy.url], count=10, concurrency=10,
                                                                        timeout=30)))
    sender.start()
    wait_until(lambda: doomed.metric("weather_worker_terminals_active") == 10, 10, what="entries in hand")
    doomed.signal(signal.SIGKILL)
    doomed.wait(10)
    survivor = stack.worker("survivor", **{**SLOW, "PROCESSING_DELAY_MS": "0"}).wait_ready()
    sender.join(40)

    assert [r.status for r in with_answers] == [200] * 10
    assert survivor.metric("weather_worker_claimed_total") == 10
    assert survivor.metric("weather_worker_processed_total", {"outcome": "ok"}) == 10


def test_entries_read_beyond_the_idle_terminals_are_held_not_claimed_and_done_once(stack):
    """A worker's first read takes the lane and the shard together, and Redis gives up to
    COUNT of each: with one idle terminal, the shard's entry waits in the worker for a
    terminal, longer than CLAIM_IDLE_SECONDS here. Unleased, the other worker claimed it
    and ran it a second time."""
    import requests

    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="30").wait_ready()
    # No worker yet: synchronous requests queue in the lane, async ones in the shard.
    accepted = [requests.post(proxy.url + "/WeatherForecast/city", json={"city": f"async-{n}", "location": "x"},
                              headers={"Prefer": "respond-async"}, timeout=5) for n in range(2)]
    assert [response.status_code for response in accepted] == [202, 202]
    answers: list = []
    sender = threading.Thread(target=lambda: answers.extend(fire([proxy.url], count=2, concurrency=2, timeout=30)))
    sender.start()
    client = stack.redis.client()
    wait_until(lambda: client.exists("weather-requests:urgent") and client.xlen("weather-requests:urgent") == 2, 10,
               what="both synchronous requests in the lane")
    one_terminal = {**SLOW, "WORKER_TERMINALS": "1"}
    workers = [stack.worker(name, **one_terminal) for name in ("a", "b")]
    wait_until(lambda: pending_entries(client) == 4, 10, what="all four read: two in work, two held")
    # A worker with a terminal free looks for orphans every quarter of a second.
    workers.append(stack.worker("idle", **{**one_terminal, "PROCESSING_DELAY_MS": "0"}).wait_ready())
    sender.join(40)
    wait_until(lambda: _processed(workers) >= 4 and all(w.metric("weather_worker_terminals_active") == 0
                                                         for w in workers), 30, what="all four done")

    assert [r.status for r in answers] == [200, 200]
    assert _processed(workers) == 4, "an entry held beyond the terminals was claimed and done twice"
    assert sum(worker.metric("weather_worker_claimed_total") for worker in workers) == 0
