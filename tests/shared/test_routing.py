"""Writes per node on a real three-primary cluster: a node that is down fails only its own
items, says they were not sent, and nothing that landed is written twice."""

from __future__ import annotations

import signal

import pytest
from redis.crc import key_slot

from app.shared import connections, contract
from app.shared.replication import ReplicaWait
from app.shared.routing import NodeWriter, NotSent, Routed
from app.shared.topology import Cluster

pytestmark = pytest.mark.system

STREAMS = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, 6, tagged=True)


def _xadd(stream: str, number: int):
    def add(pipe):
        pipe.xadd(stream, {"n": number})
    return add


def _writer(redis_cluster):
    topology = Cluster(redis_cluster.url)
    client = topology.client(client_name="test")
    return NodeWriter(topology, client, ReplicaWait(0, 0)), client


def test_a_dead_node_fails_only_its_own_items_as_not_sent(redis_cluster):
    writer, client = _writer(redis_cluster)
    assert all(not isinstance(r, Exception) for r in writer.execute([Routed(s, _xadd(s, 0)) for s in STREAMS]))
    victim = redis_cluster.owner(STREAMS[-1])
    on_victim = {stream for stream in STREAMS if redis_cluster.owner(stream) is victim}
    before = {stream: client.xlen(stream) for stream in STREAMS if stream not in on_victim}

    victim.signal(signal.SIGKILL)
    victim.process.wait(10)
    # At once: the other primaries serve their slots until the cluster marks the node failed.
    results = writer.execute([Routed(stream, _xadd(stream, 1)) for stream in STREAMS])

    for stream, result in zip(STREAMS, results, strict=True):
        if stream in on_victim:
            assert isinstance(result, NotSent), result
        else:
            assert not isinstance(result, Exception), result
    # The healthy nodes' entries are in once each: nothing was sent again.
    assert {stream: client.xlen(stream) for stream in before} == {stream: n + 1 for stream, n in before.items()}


def test_a_moved_slot_is_refused_as_not_sent_and_the_routes_are_read_again(redis_cluster, monkeypatch):
    monkeypatch.setattr(connections, "ROUTE_REFRESH_INTERVAL_SECONDS", 0)
    writer, client = _writer(redis_cluster)
    stream = STREAMS[0]
    writer.execute([Routed(stream, _xadd(stream, 0))])
    source = redis_cluster.owner(stream)
    target = next(node for node in redis_cluster.nodes if node is not source)
    redis_cluster.move_slot(key_slot(stream.encode()), source, target)
    refreshes = client.route_refreshes

    [refused] = writer.execute([Routed(stream, _xadd(stream, 1))])

    assert isinstance(refused, NotSent) and "MovedError" in str(refused)
    assert client.route_refreshes == refreshes + 1
    [written] = writer.execute([Routed(stream, _xadd(stream, 2))])
    assert not isinstance(written, Exception)
    assert [fields[b"n"] for _, fields in client.xrange(stream)] == [b"0", b"2"]
