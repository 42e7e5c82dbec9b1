"""Request stream shards on a real three-primary Redis Cluster."""

from __future__ import annotations

import collections
import signal
import threading
import time

import pytest
import requests
from redis.crc import key_slot

from app.shared import contract
from app.shared.settings import CommonSettings
from tests.chaos.test_poison import POISON
from tests.support.load import SteadyLoad, fire, replies_per_request, summary
from tests.support.processes import entries_added, pending_entries, pending_of, wait_until

pytestmark = pytest.mark.system

SHARDS = 6
GROUP = contract.DEFAULT_CONSUMER_GROUP
STREAMS = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, SHARDS, tagged=True)


def _pending(client, stream: str, consumer: str | None = None) -> int:
    """In the shard and its prompt lane."""
    if consumer is None:
        return pending_entries(client, stream, GROUP)
    return len(pending_of(client, consumer, stream, GROUP, 1000))


def _nothing_pending(client) -> bool:
    return all(_pending(client, stream) == 0 for stream in STREAMS)


def _xadd_calls(node) -> int:
    return int(node.client().info("commandstats").get("cmdstat_xadd", {"calls": 0})["calls"])


def _assert_each_answered_its_own_caller(results, count: int) -> None:
    assert [r.status for r in results] == [200] * count
    assert all(r.body["city"] == r.city for r in results)
    assert len({r.body["requestId"] for r in results}) == count


def test_requests_spread_over_every_shard_and_every_primary(cluster_stack, redis_cluster):
    env = {"REQUEST_STREAM_SHARDS": str(SHARDS)}
    proxies, workers = cluster_stack.started(2, ["w0", "w1"], env,
                                             {"PROCESSING_DELAY_MS": "5-20", "WORKER_TERMINALS": "10", **env})
    client = redis_cluster.client()
    calls_before = {node.port: _xadd_calls(node) for node in redis_cluster.nodes}

    results = fire([p.url for p in proxies], count=600, concurrency=30)
    wait_until(lambda: _nothing_pending(client), 10, what="every entry acknowledged")

    added = {stream: entries_added(client, stream) for stream in STREAMS}
    per_primary = collections.Counter()
    for stream, count in added.items():
        per_primary[redis_cluster.owner(stream).port] += count
    xadds = {node.port: _xadd_calls(node) - calls_before[node.port] for node in redis_cluster.nodes}
    print(summary("cluster", results), f"entries per shard={list(added.values())} "
          f"requests per primary={dict(per_primary)} XADDs per primary (requests and replies)={xadds}")

    _assert_each_answered_its_own_caller(results, 600)
    assert sum(added.values()) == 600
    assert all(count > 0 for count in added.values()), "a shard was never used"
    assert len(per_primary) == 3
    assert all(count >= 0.2 * 600 for count in per_primary.values())
    exposition = requests.get(workers[0].url + "/metrics", timeout=5).text
    # Each shard and its prompt lane.
    assert sum(line.startswith("weather_worker_shard_lag_entries{") for line in exposition.splitlines()) == 2 * SHARDS


def test_a_killed_worker_leaves_orphans_in_every_shard_and_they_are_claimed(cluster_stack, redis_cluster):
    env = {"REQUEST_STREAM_SHARDS": str(SHARDS), "PROCESSING_DELAY_MS": "200-400", "WORKER_TERMINALS": "12",
           "CLAIM_IDLE_SECONDS": "2"}
    [proxy], [victim, survivor] = cluster_stack.started(1, ["victim", "survivor"],
                                                        {"REQUEST_TIMEOUT_SECONDS": "20", **env}, env)
    client = redis_cluster.client()

    results: list = []
    load = threading.Thread(target=lambda: results.extend(fire([proxy.url], count=300, concurrency=40, timeout=25)))
    load.start()
    wait_until(lambda: all(_pending(client, stream, "victim") for stream in STREAMS), 15,
               what="the victim holding entries of every shard")
    orphans = {stream: _pending(client, stream, "victim") for stream in STREAMS}
    victim.signal(signal.SIGKILL)
    victim.wait(timeout=5)
    wait_until(lambda: not any(_pending(client, stream, "victim") for stream in STREAMS), 15,
               what="every shard's orphans taken over")
    load.join(timeout=60)
    wait_until(lambda: _nothing_pending(client), 10, what="every entry acknowledged")
    replies = replies_per_request([node.client() for node in redis_cluster.nodes])
    print(summary("cluster worker killed", results), f"orphans per shard={list(orphans.values())} "
          f"claimed={survivor.metric('weather_worker_claimed_total'):g}")

    _assert_each_answered_its_own_caller(results, 300)
    assert survivor.metric("weather_worker_claimed_total") >= sum(orphans.values())
    assert max(replies.values()) <= 2
    assert set(replies) == {r.body["requestId"] for r in results}


def test_poison_in_one_shard_goes_to_that_shards_dead_letter_stream(cluster_stack, redis_cluster):
    env = {"REQUEST_STREAM_SHARDS": str(SHARDS)}
    [proxy], _ = cluster_stack.started(1, ["w0", "w1"], env,
                                       {"PROCESSING_DELAY_MS": "10-30", "WORKER_TERMINALS": "6", **env})
    client = redis_cluster.client()
    target = STREAMS[2]

    results: list = []
    load = threading.Thread(target=lambda: results.extend(fire([proxy.url], count=150, concurrency=15)))
    load.start()
    poison_ids = {client.xadd(target, fields): reason for fields, reason in POISON}
    load.join(timeout=60)
    dead_letters = contract.dead_letter_stream(target)
    wait_until(lambda: client.xlen(dead_letters) == len(POISON), 10, what="poison dead-lettered")
    wait_until(lambda: _nothing_pending(client), 10, what="every entry acknowledged")

    letters = {fields[b"dlq_source_id"]: fields for _, fields in client.xrange(dead_letters)}
    assert key_slot(dead_letters.encode()) == key_slot(target.encode())
    assert [r.status for r in results] == [200] * 150
    assert set(letters) == set(poison_ids)
    for entry_id, reason in poison_ids.items():
        assert reason in letters[entry_id][b"dlq_reason"]
    assert all(client.xlen(contract.dead_letter_stream(s)) == 0 for s in STREAMS if s != target)


def test_a_shard_slot_moved_to_another_primary_under_load_loses_nothing(cluster_stack, redis_cluster):
    env = {"REQUEST_STREAM_SHARDS": str(SHARDS)}
    [proxy], workers = cluster_stack.started(1, ["w0", "w1"], {"REQUEST_TIMEOUT_SECONDS": "15", **env},
                                             {"PROCESSING_DELAY_MS": "10-50", "WORKER_TERMINALS": "10", **env})
    client = redis_cluster.client()
    moving = STREAMS[0]
    source = redis_cluster.owner(moving)
    target = next(node for node in redis_cluster.nodes if node is not source)

    with SteadyLoad(proxy.url, rate=60, max_seconds=8, timeout=20) as load:
        time.sleep(2.5)
        keys_moved = redis_cluster.move_slot(key_slot(moving.encode()), source, target)
        moved_at = time.monotonic()
        time.sleep(3)
        # And back again, with entries pending in it.
        redis_cluster.move_slot(key_slot(moving.encode()), target, source)
        time.sleep(2.5)
    results = load.stop()
    wait_until(lambda: _nothing_pending(client), 10, what="every entry acknowledged")
    after = [r for r in results if r.started > moved_at]
    added = entries_added(client, moving)
    print(summary("slot moved", results), f"keys moved={keys_moved} sent after the move={len(after)} "
          f"entries in the moved shard={added}")

    assert keys_moved >= 1, "the shard's stream was not in the slot that moved"
    assert redis_cluster.owner(moving) is source
    assert after and added > 0
    _assert_each_answered_its_own_caller(results, len(results))
    assert all(worker.alive() for worker in workers)


def test_stream_reads_find_their_slot_without_asking_the_server(redis_cluster):
    client = CommonSettings(redis_url=redis_cluster.url, redis_cluster=True).topology.client(client_name="t")
    stream = STREAMS[3]
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    client.xadd(stream, {"k": "v"})
    for node in redis_cluster.nodes:
        node.client().config_resetstat()

    assert client.xread({stream: "0-0"}, count=5)[0][0] == stream.encode()
    assert client.xreadgroup(GROUP, "c", {stream: ">"}, count=5, block=10)[0][0] == stream.encode()

    calls = [node.client().info("commandstats") for node in redis_cluster.nodes]
    assert not any("cmdstat_command|getkeys" in stats for stats in calls)
    assert sum(stats.get("cmdstat_xreadgroup", {}).get("calls", 0) for stats in calls) == 1


def test_admission_on_a_cluster_reads_every_shard_and_refuses_an_overload_at_once(cluster_stack, redis_cluster):
    """Two proxies judge from the lag of 6 shards on 3 primaries and the drain one worker
    publishes: below capacity nothing is refused, at 3x the surplus is refused at once."""
    env = {"REQUEST_STREAM_SHARDS": str(SHARDS)}
    proxies, [worker] = cluster_stack.started(2, ["w"], {**env, "REQUEST_TIMEOUT_SECONDS": "4"},
                                              {**env, "PROCESSING_DELAY_MS": "200", "WORKER_TERMINALS": "6"})
    urls = [proxy.url for proxy in proxies]
    calm = fire(urls, count=30, concurrency=3)  # 30 a second can be served; 15 at most are asked
    assert [r.status for r in calm] == [200] * 30
    wait_until(lambda: worker.metric("weather_worker_drain_per_second") > 0, 5, what="drain published")
    time.sleep(0.5)

    flood = fire(urls, count=400, concurrency=100)  # 100 waiting at once against 30 a second

    statuses = collections.Counter(r.status for r in flood)
    assert statuses[503] > 0 and statuses[200] > 0 and set(statuses) <= {200, 503, 504}, statuses
    assert statuses[504] <= 0.02 * len(flood), statuses
    exposition = requests.get(proxies[0].metrics_url + "/metrics", timeout=5).text
    assert "weather_proxy_drain_per_second" in exposition
    drain = [line for line in exposition.splitlines() if line.startswith("weather_proxy_drain_per_second")]
    assert drain and float(drain[0].split()[-1]) > 0, drain
