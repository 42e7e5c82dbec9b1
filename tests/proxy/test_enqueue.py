"""The proxy's enqueue on a real three-primary cluster with one primary dead: every request
lands once, on a shard that can take it, naming the reply stream of that shard."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.proxy.enqueue import Enqueuer, NoShardAvailable
from app.proxy.shards import ShardHealth
from app.shared import contract
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard
from app.shared.routing import NodeWriter
from app.shared.settings import RetryPolicy
from app.shared.topology import Cluster

pytestmark = pytest.mark.system

STREAMS = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, 6, tagged=True)
REPLY_STREAMS = contract.reply_streams(STREAMS, "host", 1, "token")


def _enqueuer(url: str) -> tuple[Enqueuer, object]:
    topology = Cluster(url)
    client = topology.client(client_name="test", socket_timeout=0.3)
    guard = RedisGuard("proxy", RetryPolicy(3, 0.01, 1.0), 5, 30)
    return Enqueuer(NodeWriter(topology, client, ReplicaWait(0, 0)), guard, ShardHealth(STREAMS), REPLY_STREAMS,
                    resend_unknown=topology.shards_span_nodes), client


def _landed(client, streams) -> dict[str, list[str]]:
    landed: dict[str, list[str]] = {}
    for stream in streams:
        for _, fields in client.xrange(stream):
            landed.setdefault(contract.WeatherRequest.from_fields(fields).request_id, []).append(stream)
    return landed


def _request(number: int) -> contract.WeatherRequest:
    return contract.WeatherRequest(f"r{number}", "", contract.now_ms() + 10_000, "Oslo", "Norway")


def test_with_a_primary_dead_every_request_lands_once_on_a_live_shard(redis_cluster):
    enqueuer, client = _enqueuer(redis_cluster.url)
    victim = redis_cluster.owner(STREAMS[0])
    dead = {stream for stream in STREAMS if redis_cluster.owner(stream) is victim}
    victim.signal(signal.SIGKILL)
    victim.process.wait(10)

    with ThreadPoolExecutor(max_workers=20) as pool:
        shards = [stream for stream, _ in pool.map(lambda n: enqueuer.enqueue(_request(n), "0-0", 1.0), range(60))]

    assert not dead & set(shards)
    landed = {}
    for stream in set(STREAMS) - dead:
        for _, fields in client.xrange(stream):
            request = contract.WeatherRequest.from_fields(fields)
            landed.setdefault(request.request_id, []).append(stream)
            # The reply comes back on the node of the request.
            assert request.reply_to == REPLY_STREAMS[stream]
    assert sorted(landed) == sorted(f"r{n}" for n in range(60))
    assert all(len(streams) == 1 for streams in landed.values()), "an entry was written twice"


def test_when_no_shard_can_take_it_the_request_is_refused_within_its_budget(redis_cluster):
    enqueuer, _ = _enqueuer(redis_cluster.url)
    for node in redis_cluster.nodes:
        node.signal(signal.SIGKILL)
        node.process.wait(10)

    with pytest.raises(NoShardAvailable):
        enqueuer.enqueue(_request(1), "0-0", 0.5)


def test_a_write_of_unknown_fate_is_sent_again_on_another_node(redis_cluster):
    """A frozen primary takes the connection and the bytes but never answers: the write's
    fate is unknown. The request is a read, so it goes to a live shard at once; the frozen
    node may hold a second copy once it thaws (processed twice, never lost, never a 503)."""
    enqueuer, client = _enqueuer(redis_cluster.url)
    for number in range(len(STREAMS)):  # a connection to every node, so the freeze meets a sent write
        enqueuer.enqueue(_request(1000 + number), "0-0", 1.0)
    victim = redis_cluster.owner(STREAMS[0])
    frozen = {stream for stream in STREAMS if redis_cluster.owner(stream) is victim}
    victim.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            shards = list(pool.map(lambda n: enqueuer.enqueue(_request(n), "0-0", 2.0)[0], range(30)))
    finally:
        victim.signal(signal.SIGCONT)

    assert not frozen & set(shards), "an entry was answered as queued on the frozen node"
    live = _landed(client, set(STREAMS) - frozen)
    assert all(len(live.get(f"r{n}", [])) == 1 for n in range(30)), "an entry is missing or twice on live shards"


def test_a_primary_out_of_memory_refuses_and_its_requests_land_once_elsewhere(redis_cluster):
    """Redis at maxmemory (noeviction) refuses a write before running it: a refusal, not a
    write of unknown fate, so nothing is counted as perhaps written twice."""
    from app.proxy import metrics

    enqueuer, client = _enqueuer(redis_cluster.url)
    full = redis_cluster.owner(STREAMS[0])
    refused = {stream for stream in STREAMS if redis_cluster.owner(stream) is full}
    unknown_before = metrics.ENQUEUE_FATE_UNKNOWN._value.get()
    full.client().config_set("maxmemory", 1)
    try:
        shards = [enqueuer.enqueue(_request(n), "0-0", 1.0)[0] for n in range(30)]
    finally:
        full.client().config_set("maxmemory", 0)

    assert not refused & set(shards)
    assert metrics.ENQUEUE_FATE_UNKNOWN._value.get() == unknown_before
    landed = _landed(client, STREAMS)
    assert sorted(landed) == sorted(f"r{n}" for n in range(30))
    assert all(len(streams) == 1 for streams in landed.values())
