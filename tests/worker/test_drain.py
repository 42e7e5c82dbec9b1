"""The worker's drain rate: learned from its entries, published for the proxies, and the
reason it does not start an entry it cannot finish in time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.shared import contract
from app.worker.drain import MIN_SAMPLES, DrainMeter, DrainPublisher
from app.worker.handling import _made_late_by_waiting
from tests.support.processes import wait_until

pytestmark = pytest.mark.system


def test_the_meter_says_nothing_until_it_has_seen_enough():
    meter = DrainMeter(terminals=5)
    for _ in range(MIN_SAMPLES - 1):
        meter.finished(0.3, 0.31)
    assert meter.expected_work_seconds() is None and meter.per_second() == 0
    meter.finished(0.3, 0.31)
    assert meter.expected_work_seconds() == pytest.approx(0.3)
    assert meter.per_second() == pytest.approx(5 / 0.31)


def test_a_worker_publishes_its_drain_and_withdraws_it_when_it_stops(stack):
    proxy = stack.proxy().wait_ready()
    worker = stack.worker("w", WORKER_TERMINALS="4", PROCESSING_DELAY_MS="50").wait_ready()
    for index in range(MIN_SAMPLES + 2):
        assert proxy.ask(f"City-{index}", "X").status_code == 200
    client = stack.redis.client()
    key = contract.drain_key("weather-requests")

    def published() -> contract.Drain | None:
        raw = client.hget(key, "w")
        drain = contract.Drain.decode(raw) if raw else None
        return drain if drain is not None and drain.per_second > 0 else None

    drain = wait_until(published, 5, what="the drain published")
    assert drain.terminals == 4
    assert 0.05 <= drain.work_seconds < 0.1
    assert 4 / 0.2 < drain.per_second <= 4 / 0.05  # terminals over the time an entry holds one
    assert abs(drain.at_ms - contract.now_ms()) < 3000
    assert client.pttl(key) > 0
    assert worker.metric("weather_worker_drain_per_second") == pytest.approx(drain.per_second, rel=0.5)

    worker.stop()
    assert client.hget(key, "w") is None


def test_an_entry_with_less_time_left_than_its_work_is_answered_at_once_without_the_work(stack):
    # Admission off: the point is what a worker does with what it is given.
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1.5", ADMISSION_ENABLED="false").wait_ready()
    worker = stack.worker("w", WORKER_TERMINALS="1", PROCESSING_DELAY_MS="400").wait_ready()
    for index in range(MIN_SAMPLES):
        assert proxy.ask(f"City-{index}", "X").status_code == 200
    wait_until(lambda: worker.metric("weather_worker_expected_work_seconds") > 0, 5, what="work learned")

    # Four at once on one terminal: the third starts at 0.8 s with 0.7 s left and is done;
    # the fourth would start at 1.2 s with 0.3 s left, less than its 0.4 s of work.
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: proxy.ask(f"Late-{i}", "X"), range(4)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(200) >= 2 and 504 in statuses, statuses
    late = [answer for answer in answers if answer.status_code == 504]
    # Answered when the worker saw it was too late, not at the 1.5 s deadline.
    assert all(answer.elapsed.total_seconds() < 1.45 for answer in late), [a.elapsed for a in late]
    assert late[0].headers["Content-Type"] == "application/problem+json"
    assert worker.metric("weather_worker_processed_total", {"outcome": "late"}) == len(late)
    assert time.monotonic() - started < 3
    assert requests.get(proxy.url + "/readyz", timeout=5).status_code == 200


def test_the_late_skip_judges_only_entries_their_wait_made_late():
    """A work figure above the whole deadline (work that once took 12 s under a 10 s
    deadline) must not skip every entry for good: no wait made those late."""
    added_ms = 1_000_000
    entry_id = f"{added_ms}-0".encode()
    deadline_ms = added_ms + 10_000
    # Waited 5 s, 6 s of work: late. Fresh, 6 s of work: in time.
    assert _made_late_by_waiting(deadline_ms, entry_id, added_ms + 5_000, 6.0)
    assert not _made_late_by_waiting(deadline_ms, entry_id, added_ms + 10, 6.0)
    # A figure of 12 s: no entry of a 10 s deadline could be done in time, so none is skipped.
    assert not _made_late_by_waiting(deadline_ms, entry_id, added_ms + 5_000, 12.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_workers_remove_only_fields_that_stopped_changing_whatever_their_clock_or_format(redis_server):
    """A worker whose clock is 60 s behind, or a newer release's format, is live while it
    publishes; a field unchanged for 10 s (on the publisher's own clock) is removed."""
    client, clock = redis_server.client(), _Clock()
    key = contract.drain_key("weather-requests")
    publisher = DrainPublisher(client, DrainMeter(5), key, "me", threading.Event(), clock=clock)
    behind_ms = contract.now_ms() - 60_000
    for second in range(12):
        client.hset(key, "behind", contract.Drain(behind_ms + second * 1000, 10.0, 0.1, 5).encode())
        client.hset(key, "next-release", f"v2 {second} whatever it writes")
        client.hset(key, "gone", "1 10.0 0.1 5")  # never changes again
        publisher.publish_once()
        clock.now += 1
    assert set(client.hkeys(key)) == {b"me", b"behind", b"next-release"}
