"""Chaos 3: poison entries written straight into the stream while real requests flow."""

from __future__ import annotations

import threading

import pytest

from tests.support.load import fire, summary
from tests.support.processes import pending_entries, wait_until

pytestmark = pytest.mark.system

FAR_FUTURE_MS = b"99999999999999"
POISON = [
    ({b"garbage": b"\xff\x00\xfe"}, b"missing field 'v'"),
    ({b"v": b"1", b"id": b"p1", b"reply_to": b"weather-responses:x:1:t", b"deadline_ms": FAR_FUTURE_MS,
      b"body": b"{not json"}, b"body is not valid JSON"),
    ({b"v": b"1", b"id": b"p2", b"deadline_ms": FAR_FUTURE_MS, b"body": b'{"city":"A","location":"B"}'},
     b"missing field 'reply_to'"),
    ({b"v": b"1", b"id": b"p3", b"reply_to": b"weather-requests", b"deadline_ms": FAR_FUTURE_MS,
      b"body": b'{"city":"A","location":"B"}'}, b"reply_to is not a reply stream"),
    ({b"v": b"2", b"id": b"p4"}, b"unsupported protocol version"),
    ({b"v": b"1", b"id": b"p5", b"reply_to": b"weather-responses:x:1:t", b"deadline_ms": b"tomorrow",
      b"body": b'{"city":"A","location":"B"}'}, b"deadline_ms is not an integer"),
    ({b"v": b"1", b"id": b"p6", b"reply_to": b"weather-responses:x:1:t", b"deadline_ms": FAR_FUTURE_MS,
      b"body": b'{"city":"","location":"B"}'}, b"body.city"),
]


def test_poison_is_dead_lettered_while_real_requests_succeed(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="15")
    workers = [stack.worker(f"w{i}", PROCESSING_DELAY_MS="10-50") for i in range(2)]
    for process in [proxy, *workers]:
        process.wait_ready()
    client = stack.redis.client()

    results: list = []
    load = threading.Thread(target=lambda: results.extend(fire([proxy.url], count=150, concurrency=15)))
    load.start()
    poison_ids = {client.xadd("weather-requests", fields): reason for fields, reason in POISON}
    load.join(timeout=60)
    wait_until(lambda: client.xlen("weather-requests:dlq") == len(POISON), 10, what="poison dead-lettered")

    letters = {fields[b"dlq_source_id"]: fields for _, fields in client.xrange("weather-requests:dlq")}
    lost = sum(1 for r in results if r.status is None)
    print(summary("poison", results), f"lost={lost} dead_lettered={len(letters)}")

    assert [r.status for r in results] == [200] * 150
    assert set(letters) == set(poison_ids)
    for entry_id, reason in poison_ids.items():
        assert reason in letters[entry_id][b"dlq_reason"]
    # The original fields travel with the letter, byte for byte.
    assert letters[next(iter(poison_ids))][b"garbage"] == b"\xff\x00\xfe"
    assert pending_entries(client) == 0
    assert all(worker.alive() for worker in workers)
    assert sum(w.metric("weather_worker_dead_lettered_total", {"reason": "poison"}) for w in workers) == len(POISON)
    assert not client.exists("weather-responses:x:1:t")
