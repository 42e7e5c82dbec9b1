"""Chaos 5: a Sentinel set (primary, replica, three Sentinels) fails over under load."""

from __future__ import annotations

import collections
import signal
import time

import pytest
import requests

from tests.support.load import SteadyLoad, ask, summary
from tests.support.processes import RedisServer, metric_value, pending_entries, wait_until
from tests.support.sentinel import SENTINEL_URL, SentinelSet

pytestmark = pytest.mark.system

TIMEOUT_SECONDS = 10
CLAIM_IDLE_SECONDS = 2
RATE = 40


def _start(stack, sentinels: SentinelSet, **env: str):
    common = {"REDIS_URL": SENTINEL_URL, **sentinels.env(), **env}
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS), **common)
    workers = [stack.worker(f"w{i}", PROCESSING_DELAY_MS="20-60", WORKER_TERMINALS="5",
                            CLAIM_IDLE_SECONDS=str(CLAIM_IDLE_SECONDS), **common) for i in range(2)]
    for process in (proxy, *workers):
        process.wait_ready()
    assert [ask(proxy.url, i, 5).status for i in range(5)] == [200] * 5
    return proxy, workers


def _each_reply_is_its_own(results) -> bool:
    return all(r.body["city"] == r.city for r in results if r.status == 200)


def _circuit(process, kind: str) -> float:
    return metric_value(requests.get(process.metrics_url + "/metrics", timeout=2).text, f"weather_{kind}_circuit_state")


def _late_replies(proxy) -> float:
    exposition = requests.get(proxy.metrics_url + "/metrics", timeout=2).text
    return metric_value(exposition, "weather_proxy_late_replies_total")


# Two replicas: with REDIS_WAIT_REPLICAS=1 the promoted one needs another to confirm its
# writes. With a single replica every enqueue is refused (503) until the old primary
# rejoins: that is the durability trade-off of REDIS_WAIT_REPLICAS.
@pytest.mark.parametrize("sentinels", [2], indirect=True)
def test_primary_killed_under_load_every_request_answered_nothing_lost(stack, sentinels):
    proxy, workers = _start(stack, sentinels, REDIS_WAIT_REPLICAS="1")
    old = sentinels.primary

    with SteadyLoad(proxy.url, RATE, max_seconds=25, timeout=TIMEOUT_SECONDS + 10, start=1000) as load:
        time.sleep(3)
        old.signal(signal.SIGKILL)
        old.wait(timeout=5)
        killed_at = time.monotonic()
        promotion_seconds = sentinels.wait_promotion(old.port)
        promoted_at = killed_at + promotion_seconds
        time.sleep(8)
        results = load.stop()

    new_primary = sentinels.node(sentinels.primary_port()).client()
    wait_until(lambda: pending_entries(new_primary) == 0,
               CLAIM_IDLE_SECONDS + 10, what="nothing pending on the new primary")
    counts = collections.Counter(r.status for r in results)
    refused = [r for r in results if r.status == 503]
    after_window = [r for r in results if r.started >= promoted_at + 5]
    first_ok_after = min((r.started + r.seconds - promoted_at for r in results
                          if r.status == 200 and r.started > killed_at), default=float("nan"))
    print(summary("sentinel failover", results),
          f"| promotion={promotion_seconds:.2f}s after the kill; "
          f"503 max={max((r.seconds for r in refused), default=0):.2f}s; "
          f"first 200 sent after the kill answered {first_ok_after:.2f}s "
          f"after promotion; 200s among requests sent 5 s after promotion: "
          f"{sum(r.status == 200 for r in after_window)}/{len(after_window)}; "
          f"late (duplicate) replies={_late_replies(proxy):g}; slowest={max(r.seconds for r in results):.2f}s")

    assert len(results) > RATE * 10
    assert set(counts) <= {200, 503}, counts  # no 504, no 5xx of another kind, none without an answer
    assert max((r.seconds for r in refused), default=0) <= 2.5
    assert after_window and all(r.status == 200 for r in after_window)
    assert _each_reply_is_its_own(results)
    assert all(p.alive() for p in (proxy, *workers))


def test_old_primary_rejoins_as_replica_without_callers_noticing(stack, sentinels):
    proxy, workers = _start(stack, sentinels)
    old = sentinels.primary
    old.signal(signal.SIGKILL)
    old.wait(timeout=5)
    sentinels.wait_promotion(old.port)
    # Every gunicorn process of the proxy (the gauge is the worst of them) and every worker back.
    wait_until(lambda: _circuit(proxy, "proxy") == 0, 10, interval=0.1, what="every proxy breaker closed")
    for worker in workers:
        wait_until(lambda w=worker: requests.get(w.url + "/readyz", timeout=2).status_code == 200, 10,
                   what=f"{worker.name} ready")

    with SteadyLoad(proxy.url, RATE, max_seconds=20, timeout=TIMEOUT_SECONDS + 10, start=5000) as load:
        time.sleep(1)
        restarted = RedisServer(old.workdir, port=old.port, appendonly=True)
        stack.processes.append(restarted)
        started = time.monotonic()
        wait_until(lambda: restarted.client().info("replication").get("master_link_status") == "up", 20,
                   interval=0.1, what="the old primary replicating from the new one")
        rejoined = time.monotonic() - started
        time.sleep(3)
        results = load.stop()

    print(summary("old primary rejoins", results), f"| rejoined as replica in {rejoined:.2f}s",
          collections.Counter(r.body.get("error") for r in results if r.status != 200 and r.body))
    assert restarted.client().info("replication")["role"] == "slave"
    assert [r.status for r in results] == [200] * len(results)
    assert _each_reply_is_its_own(results)


@pytest.mark.parametrize("sentinels", [2], indirect=True)
def test_graceful_failover_demoted_primary_answers_readonly_never_seen_by_callers(stack, sentinels):
    """SENTINEL FAILOVER: the old primary stays up, then is demoted and answers READONLY on open connections.

    Sentinel promotes the replica first and demotes the old primary only later: in between,
    the old primary still takes writes that its demotion then discards. Without
    REDIS_WAIT_REPLICAS those callers get 504 (61 of 368 in one run); with it, the old
    primary has no replica left to confirm them, so they are retried or refused (503)."""
    proxy, _ = _start(stack, sentinels, REDIS_WAIT_REPLICAS="1")
    old_port = sentinels.primary_port()
    with SteadyLoad(proxy.url, RATE, max_seconds=15, timeout=TIMEOUT_SECONDS + 10, start=9000) as load:
        time.sleep(2)
        sentinels.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "mymaster")
        asked_at = time.monotonic()
        promotion_seconds = sentinels.wait_promotion(old_port)
        time.sleep(8)
        results = load.stop()

    last_second = [r for r in results if r.started > max(r.started for r in results) - 1]
    counts = collections.Counter(r.status for r in results)
    refused = [r.started - asked_at for r in results if r.status == 503]
    print(summary("graceful failover", results), f"| promotion={promotion_seconds:.2f}s; 503s for requests sent "
          f"{min(refused, default=0):.2f}-{max(refused, default=0):.2f}s after the failover was asked for")
    assert set(counts) <= {200, 503}, counts
    assert max((r.seconds for r in results if r.status == 503), default=0) <= 2.5
    assert all("READONLY" not in str(r.body) for r in results)
    # Durable writes resume once Sentinel has given the new primary a replica.
    assert [r.status for r in last_second] == [200] * len(last_second)


def test_replica_not_confirming_in_time_gives_fast_503s_never_a_hang(stack, sentinels):
    proxy, _ = _start(stack, sentinels, REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="100")
    replica = sentinels.replicas[0]
    replica.signal(signal.SIGSTOP)
    try:
        results = [ask(proxy.url, 100 + i, TIMEOUT_SECONDS + 5) for i in range(10)]
    finally:
        replica.signal(signal.SIGCONT)
    errors = collections.Counter(r.body["error"] for r in results)
    print(summary("replica paused", results), f"| slowest={max(r.seconds for r in results):.2f}s errors={errors}")
    assert [r.status for r in results] == [503] * 10
    assert {r.body["error"] for r in results} <= {"redis_unavailable", "circuit_open"}
    assert max(r.seconds for r in results) < 2.5
    wait_until(lambda: ask(proxy.url, 200, 5).status == 200, 10, interval=0.2, what="200 once the replica answers")


def test_a_partitioned_primary_under_wait_costs_refusals_never_a_late_or_lost_answer(stack, partitionable_sentinels,
                                                                                      isolated_network):
    """The primary cut off for 20 s (every node and Sentinel on a host of its own; every packet
    of the primary's link dropped both ways), not killed, with two replicas and
    REDIS_WAIT_REPLICAS=1. On one Redis nothing else can take the writes, so requests sent
    before the promotion are refused (503); none waits past its deadline, none is answered
    504, every request sent 5 s after the promotion gets 200, and nothing stays pending."""
    sentinels = partitionable_sentinels
    proxy, _ = _start(stack, sentinels, REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="200")
    old = sentinels.primary
    assert old.host is not None
    with SteadyLoad(proxy.url, RATE, max_seconds=30, timeout=TIMEOUT_SECONDS + 10, start=12000) as load:
        time.sleep(2)
        isolated_network.partition(old.host)
        cut_at = time.monotonic()
        try:
            promotion_seconds = sentinels.wait_promotion(old.port)
            time.sleep(max(0.0, cut_at + 20 - time.monotonic()))
        finally:
            isolated_network.heal(old.host)
        time.sleep(6)
        results = load.stop()

    promoted = cut_at + promotion_seconds
    counts = collections.Counter(r.status for r in results)
    after = [r for r in results if r.started >= promoted + 5]
    print(summary("primary cut off for 20 s, REDIS_WAIT_REPLICAS=1", results),
          f"| promotion={promotion_seconds:.2f}s; slowest={max(r.seconds for r in results):.2f}s; "
          f"errors={collections.Counter(r.body.get('error') for r in results if r.status != 200 and r.body)}")
    assert set(counts) <= {200, 503}, counts
    assert max(r.seconds for r in results) <= TIMEOUT_SECONDS + 2
    assert after and all(r.status == 200 for r in after), collections.Counter(r.status for r in after)
    assert _each_reply_is_its_own(results)
    new_primary = sentinels.node(sentinels.primary_port())
    wait_until(lambda: pending_entries(new_primary.client()) == 0,
               CLAIM_IDLE_SECONDS + 10, what="nothing pending on the new primary")
