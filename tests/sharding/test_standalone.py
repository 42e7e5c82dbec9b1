"""REQUEST_STREAM_SHARDS on one standalone Redis: the same guarantees as one stream."""

from __future__ import annotations

import signal
import threading

import pytest

from app.shared import contract
from tests.support.load import fire, replies_per_request, summary
from tests.support.processes import entries_added, pending_entries, pending_of, wait_until

pytestmark = pytest.mark.system

SHARDS = 4
GROUP = contract.DEFAULT_CONSUMER_GROUP
STREAMS = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, SHARDS, tagged=False)


def test_four_shards_on_standalone_redis_answer_everyone_through_a_worker_kill(stack):
    env = {"REQUEST_STREAM_SHARDS": str(SHARDS), "PROCESSING_DELAY_MS": "50-150", "WORKER_TERMINALS": "6",
           "CLAIM_IDLE_SECONDS": "2"}
    [proxy], [victim, survivor] = stack.started(1, ["victim", "survivor"],
                                                {"REQUEST_TIMEOUT_SECONDS": "15", **env}, env)
    client = stack.redis.client()

    results: list = []
    load = threading.Thread(target=lambda: results.extend(fire([proxy.url], count=400, concurrency=20, timeout=20)))
    load.start()
    wait_until(lambda: any(pending_of(client, "victim", s, GROUP, 1) for s in STREAMS),
               10, what="the victim holding entries")
    victim.signal(signal.SIGKILL)
    victim.wait(timeout=5)
    load.join(timeout=60)
    wait_until(lambda: all(pending_entries(client, s, GROUP) == 0 for s in STREAMS), 15,
               what="every entry acknowledged")

    added = [entries_added(client, s) for s in STREAMS]
    replies = replies_per_request([client])
    print(summary("standalone shards", results), f"entries per shard={added} "
          f"claimed={survivor.metric('weather_worker_claimed_total'):g}")

    assert not client.exists(contract.DEFAULT_REQUEST_STREAM), "the unsharded key was used"
    assert [r.status for r in results] == [200] * 400
    assert all(r.body["city"] == r.city for r in results)
    assert sum(added) == 400 and min(added) >= 90  # round robin per proxy process
    assert survivor.metric("weather_worker_claimed_total") >= 1
    assert max(replies.values()) <= 2
    assert set(replies) == {r.body["requestId"] for r in results}
