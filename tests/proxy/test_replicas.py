"""REDIS_WAIT_REPLICAS on real nodes: a primary that has lost its replica takes no new
entries (the others carry them, every caller gets 200), an Idempotency-Key pinned to it gets
a fast 503 naming the reason, and it takes entries again once a replica is back; with no
replica anywhere every caller gets that 503 at once."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from app.proxy import idempotency
from app.proxy.replicas import CHECK_SECONDS, online_replicas
from app.shared import contract
from tests.support.load import ask
from tests.support.processes import shard_states, wait_until

pytestmark = pytest.mark.system

SHARDS = 6
STREAMS = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, SHARDS, tagged=True)


def test_a_role_answer_counts_only_a_primarys_online_replicas():
    assert online_replicas([b"master", 3021, [[b"127.0.0.1", b"7001", b"3021"]]]) == 1
    assert online_replicas([b"master", 0, []]) == 0
    assert online_replicas([b"slave", b"127.0.0.1", 7000, b"connected", 3021]) == 0


def _key_on(streams_wanted: set[str]) -> str:
    """An Idempotency-Key whose shard (for a caller without a subject at 127.0.0.1) is one of these."""
    for number in range(10_000):
        key = f"key-{number}"
        fingerprint = idempotency.fingerprint(key, "", "127.0.0.1")
        if STREAMS[int(fingerprint[:8], 16) % len(STREAMS)] in streams_wanted:
            return key
    raise LookupError("no key maps to those shards")


def test_a_primary_without_its_replica_is_routed_around_until_one_is_back(replicated_cluster_stack,
                                                                            replicated_cluster):
    common = {"REQUEST_STREAM_SHARDS": str(SHARDS), "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "200"}
    proxy = replicated_cluster_stack.proxy(REQUEST_TIMEOUT_SECONDS="10", **common).wait_ready()
    replicated_cluster_stack.worker("w", PROCESSING_DELAY_MS="0", WORKER_TERMINALS="12", **common).wait_ready()
    assert [ask(proxy.url, n, 5).status for n in range(6)] == [200] * 6
    victim = next(node for node in replicated_cluster.primaries() if node is not replicated_cluster.nodes[0])
    cut_off = {stream for stream in STREAMS if replicated_cluster.owner(stream) is victim}

    replica = replicated_cluster.replica_of(victim)
    replica.signal(signal.SIGKILL)
    replica.process.wait(10)
    # Learned from the primary's own ROLE by every proxy process, with no write needed to find out.
    wait_until(lambda: set(shard_states(proxy.metrics_url, cut_off).values()) == {"unconfirmed"},
               3 * CHECK_SECONDS, interval=0.2, what="the shards of the primary without a replica unconfirmed")
    before = replicated_cluster.stream_lengths(cut_off)
    results = [ask(proxy.url, 100 + n, 5) for n in range(30)]
    assert [r.status for r in results] == [200] * 30, [(r.status, r.body) for r in results if r.status != 200]
    assert replicated_cluster.stream_lengths(cut_off) == before, "an entry went to a primary that cannot confirm it"

    key = _key_on(cut_off)
    started = time.monotonic()
    pinned = requests.post(proxy.url + "/WeatherForecast/city", json={"city": "Oslo", "location": "Norway"},
                           headers={"Idempotency-Key": key}, timeout=5)
    seconds = time.monotonic() - started
    assert (pinned.status_code, pinned.json()["error"]) == (503, "replicas_unavailable"), pinned.text
    assert int(pinned.headers["Retry-After"]) >= 1
    assert seconds < 1.0, f"the pinned request waited {seconds:.2f} s for a refusal known in advance"

    replica.restart()
    wait_until(lambda: replicated_cluster.role(replica) == "slave"
               and replica.client().info("replication").get("master_link_status") == "up",
               30, interval=0.2, what="the replica back and in sync")
    wait_until(lambda: set(shard_states(proxy.metrics_url, cut_off).values()) == {"writable"}, 3 * CHECK_SECONDS,
               interval=0.2, what="the shards writable again")
    assert [ask(proxy.url, 200 + n, 5).status for n in range(30)] == [200] * 30
    after = replicated_cluster.stream_lengths(cut_off)
    assert any(after[stream] > before[stream] for stream in cut_off), "no entry there since the replica came back"
    again = requests.post(proxy.url + "/WeatherForecast/city", json={"city": "Oslo", "location": "Norway"},
                          headers={"Idempotency-Key": key}, timeout=10)
    assert again.status_code == 200, again.text


def test_with_no_replica_anywhere_every_caller_gets_a_fast_503_naming_the_reason(stack):
    # A WAIT would hold each caller 2 s: a refusal known in advance holds none.
    proxy = stack.proxy(REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="2000").wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    wait_until(lambda: set(shard_states(proxy.metrics_url).values()) == {"unconfirmed"}, 3 * CHECK_SECONDS,
               interval=0.2, what="every shard unconfirmed")
    results = [ask(proxy.url, n, 5) for n in range(10)]
    assert [(r.status, r.body["error"]) for r in results] == [(503, "replicas_unavailable")] * 10
    assert max(r.seconds for r in results) < 1.0, "a refusal known in advance waited for a WAIT"


def test_the_replica_watch_outlives_a_shard_with_no_route_and_confirms_it_later(redis_server):
    """A cluster client raises SlotNotCoveredError (no RedisError) for a slot no node serves
    for a moment: it ended the watch's thread, and its shards stayed unconfirmed for good
    (keyed requests refused 503 replicas_unavailable until the process was replaced)."""
    import dataclasses

    from redis.exceptions import SlotNotCoveredError

    from app.proxy.replicas import ReplicaWatch
    from app.proxy.shards import ShardHealth
    from app.shared.loops import Loops
    from app.shared.settings import CommonSettings

    real = CommonSettings(redis_url=redis_server.url).topology
    unrouted = [3]

    @dataclasses.dataclass(frozen=True)
    class SlotsForAMoment(type(real)):  # type: ignore[misc]
        def node_client(self, client, key):  # type: ignore[no-untyped-def]
            if unrouted[0]:
                unrouted[0] -= 1
                raise SlotNotCoveredError(f"Slot of {key} is not covered by the cluster.")
            return super().node_client(client, key)

    topology = SlotsForAMoment(**{field.name: getattr(real, field.name) for field in dataclasses.fields(real)})
    shards = ShardHealth(STREAMS[:1])
    shards.can_confirm(STREAMS[0], False)
    restarts: list[str] = []
    ReplicaWatch(topology, topology.client(client_name="test-watch"), shards, 0).start(Loops(restarts.append))

    wait_until(lambda: shards.state(STREAMS[0]) == "writable", 3 * CHECK_SECONDS + 5, what="shard confirmed again")
    assert restarts == []  # no route to a shard is the watch's own business: skipped, looked at next round
