"""Chaos 1: a worker dies by SIGKILL under load; the survivor claims its entries."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from tests.support.load import fire, replies_per_request, summary
from tests.support.processes import pending_entries, pending_of, wait_until

pytestmark = pytest.mark.system

CLAIM_IDLE_SECONDS = 2
TIMEOUT_SECONDS = 15


def test_killed_worker_entries_are_claimed_and_answered(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS))
    common = {"PROCESSING_DELAY_MS": "50-150", "WORKER_TERMINALS": "5", "CLAIM_IDLE_SECONDS": str(CLAIM_IDLE_SECONDS)}
    victim = stack.worker("victim", **common)
    survivor = stack.worker("survivor", **common)
    for process in (proxy, victim, survivor):
        process.wait_ready()
    client = stack.redis.client()

    results: list = []
    load = threading.Thread(target=lambda: results.extend(
        fire([proxy.url], count=300, concurrency=20, timeout=TIMEOUT_SECONDS + 5)))
    load.start()
    time.sleep(random.uniform(0.5, 1.5))
    wait_until(lambda: victim.metric("weather_worker_terminals_active") > 0, 5, what="victim busy")
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(timeout=5)
    orphans = pending_of(client, "victim")
    wait_until(lambda: not pending_of(client, "victim"),
               CLAIM_IDLE_SECONDS + 5, what="the victim's pending entries taken over")
    drained_after = time.monotonic() - killed_at
    load.join(timeout=TIMEOUT_SECONDS + 30)
    assert pending_entries(client) == 0

    replies = replies_per_request([client])
    lost = sum(1 for r in results if r.status is None)
    print(summary("worker killed", results), f"lost={lost} orphans={len(orphans)} "
          f"claimed={survivor.metric('weather_worker_claimed_total'):g} pending_empty_after={drained_after:.1f}s "
          f"processed_twice={sum(1 for n in replies.values() if n == 2)}")

    assert len(results) == 300
    assert [r.status for r in results] == [200] * 300
    assert max(r.seconds for r in results) < TIMEOUT_SECONDS
    assert orphans, "the victim held no entries when it died; nothing was tested"
    assert survivor.metric("weather_worker_claimed_total") >= len(orphans)
    assert max(replies.values()) <= 2
    assert set(replies) == {r.body["requestId"] for r in results}
