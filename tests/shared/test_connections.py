"""redis-py's cluster traps, reproduced on real servers, and how the topology module closes them."""

from __future__ import annotations

import math
import threading

import pytest
import redis

from app.shared import connections
from app.shared.topology import Cluster, Standalone

pytestmark = pytest.mark.system


def test_a_block_longer_than_the_socket_timeout_is_cut_off_unless_the_client_is_told(redis_server):
    """redis/redis-py#2807: the socket timeout ends a blocking read that is still legitimately waiting."""
    topology = Standalone(redis_server.url)
    plain = topology.client(client_name="plain", socket_timeout=0.3)
    with pytest.raises(redis.TimeoutError):
        plain.xread({"nothing-here": "$"}, block=1000)

    told = topology.client(client_name="told", socket_timeout=0.3, longest_block_ms=1000)
    assert not told.xread({"nothing-here": "$"}, block=1000)


def test_many_callers_failing_at_once_read_the_slot_map_once(redis_cluster, monkeypatch):
    """redis/redis-py#4074: every caller that fails re-reads the topology; here one does, the others go on."""
    client = Cluster(redis_cluster.url).client(client_name="test")
    monkeypatch.setattr(connections, "ROUTE_REFRESH_INTERVAL_SECONDS", 0)
    calls = []
    started = threading.Event()
    release = threading.Event()
    original = client.nodes_manager.initialize

    def slow_initialize(*args, **kwargs):
        calls.append(1)
        started.set()
        release.wait(5)
        return original(*args, **kwargs)

    monkeypatch.setattr(client.nodes_manager, "initialize", slow_initialize)
    first = threading.Thread(target=client.refresh_routes)
    first.start()
    started.wait(5)
    others = [threading.Thread(target=client.refresh_routes) for _ in range(50)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(5)
    # None of them waited for the refresh under way, and none started another.
    assert not any(thread.is_alive() for thread in others)
    release.set()
    first.join(5)
    assert len(calls) == 1

    monkeypatch.setattr(connections, "ROUTE_REFRESH_INTERVAL_SECONDS", 60)
    for _ in range(10):
        client.refresh_routes()
    assert len(calls) == 1, "within the interval a refresh is skipped"


def test_a_cluster_that_no_node_answers_is_a_connection_error_as_one_redis_is(redis_cluster):
    """redis-py raises RedisClusterException (no RedisError) when it cannot reach any node
    and re-reads the slot map, and SlotNotCoveredError for a slot no node holds: every caller
    that handles Redis being away would take it for a bug (a background loop restarted and
    reported as failing on every pod during a plain cluster restart)."""
    from redis.exceptions import RedisClusterException

    topology = Cluster(redis_cluster.url)
    client = topology.client(client_name="test", socket_timeout=0.5)
    client.set("k", "v")
    with pytest.raises(RedisClusterException) as mistake:  # the caller's own mistake stays what it is
        client.execute_command("MGET", "a", "b")
    assert not isinstance(mistake.value, redis.ConnectionError)
    for node in redis_cluster.nodes:
        node.stop()

    with pytest.raises(redis.ConnectionError):
        client.get("k")
    pipe = client.pipeline(transaction=False)
    pipe.get("k")
    with pytest.raises(redis.ConnectionError):
        pipe.execute()
    client._routes_read_at = -math.inf
    client.refresh_routes()  # logged, not raised
    assert client.route_refreshes == 1
    with pytest.raises(redis.ConnectionError):
        client.nodes_manager.slots_cache.clear()
        topology.node_client(client, "k")


def test_readonly_from_a_demoted_primary_reads_the_slot_map_again(redis_cluster, monkeypatch):
    """redis-py raises READONLY without looking at its slot map, so every later write would go
    to the same node; the cluster client here reads the map again."""
    monkeypatch.setattr(connections, "ROUTE_REFRESH_INTERVAL_SECONDS", 0)
    client = Cluster(redis_cluster.url).client(client_name="test")
    key = "some-key"
    node = client.get_node_from_key(key)
    refreshes = client.route_refreshes
    # What a primary demoted behind the same address answers to a write, made on demand:
    # the node's own connection is switched to a replica's answer with a script error prefix.
    script = "return redis.error_reply('READONLY You can\\'t write against a read only replica.')"
    with pytest.raises(redis.exceptions.ReadOnlyError):
        client.execute_command("EVAL", script, 1, key, target_nodes=node)
    assert client.route_refreshes == refreshes + 1


def test_the_services_make_redis_count_no_errors_while_they_serve(stack, redis_server):
    """Every connection the proxy, its rate limiter and the worker open, and a sync, an async and
    a keyed request, leave Redis's errorstats without errors: each is a round trip wasted and
    noise for whoever watches Redis (redis-py asks every new connection for maintenance
    notices and sets its library name, both refused by Redis 7.0)."""
    from tests.proxy.test_async import poll, submit

    admin = redis_server.client()
    admin.config_resetstat()
    # The worker first: it creates the streams the proxy's admission reads (XINFO GROUPS of a
    # stream no worker has created yet is an error, until one has).
    stack.worker("w").wait_ready()
    proxy = stack.proxy(RATE_LIMIT="1000/second").wait_ready()

    assert proxy.ask("Oslo", "Norway").status_code == 200
    accepted = submit(proxy.url, "respond-async")
    assert poll(proxy.url, accepted.headers["Location"]).status_code == 200
    assert submit(proxy.url, "", headers={"Idempotency-Key": "errorstats-1"}).status_code == 200

    # NOSCRIPT is the one error a script cache has by design: each script's first EVALSHA on a
    # Redis that has not seen it yet.
    failed = {name: stats for name, stats in admin.info("commandstats").items()
              if stats.get("failed_calls") or stats.get("rejected_calls")}
    assert set(admin.info("errorstats")) <= {"errorstat_NOSCRIPT"}, (admin.info("errorstats"), failed)
