"""Retries and the circuit breaker against a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from app.shared.resilience import CircuitOpen, RedisGuard, RetryPolicy
from app.shared.settings import CommonSettings
from tests.support.processes import RedisServer, wait_until

FAST = RetryPolicy(max_tries=3, base_seconds=0.01, max_seconds=1.0)


def redis_client(url: str, **options) -> redis.Redis:
    return CommonSettings(redis_url=url).topology.client(**options)


def _guard(threshold: int = 3, reset: float = 30.0, probe=None) -> tuple[RedisGuard, list[int]]:
    states: list[int] = []
    return RedisGuard("test", FAST, threshold, reset, on_state=states.append, probe=probe), states


def test_blocking_reads_that_time_out_empty_are_not_failures(redis_server):
    client = redis_client(redis_server.url, client_name="t", socket_timeout=2)
    guard, states = _guard(threshold=1)

    for _ in range(10):
        assert guard.call_once(client.xread, {"empty-stream": "$"}, block=20) in (None, [], {})

    assert guard.state == "closed"
    assert states == [0]


def test_data_errors_are_neither_retried_nor_counted(redis_server):
    client = redis_client(redis_server.url, client_name="t")
    client.set("plain", "value")
    guard, _ = _guard(threshold=1)
    calls = []

    def read_plain_as_stream():
        calls.append(1)
        return client.xlen("plain")

    for _ in range(3):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            guard.call(read_plain_as_stream)

    assert len(calls) == 3
    assert guard.state == "closed"


def test_outages_are_retried_then_open_the_breaker_which_closes_after_recovery(tmp_path):
    server = RedisServer(tmp_path / "r")
    port = server.port
    client = redis_client(server.url, client_name="t")
    guard, states = _guard(threshold=2, reset=1.0)
    assert guard.call(client.ping)
    server.stop()
    attempts = []

    def ping():
        attempts.append(1)
        return client.ping()

    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            guard.call(ping)

    assert len(attempts) == 2 * FAST.max_tries
    assert guard.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        guard.call(ping)
    assert len(attempts) == 2 * FAST.max_tries  # refused without touching Redis
    assert 0 < refused.value.retry_after <= 1.0
    assert guard.refusing

    server = RedisServer(tmp_path / "r", port=port)
    try:
        wait_until(lambda: not guard.refusing, 3, what="reset timeout")
        assert guard.call(ping) is True
        assert guard.state == "closed"
        assert states == [0, 2, 1, 0]
    finally:
        server.stop()


def test_a_blocked_read_does_not_hold_up_other_operations(redis_server):
    """pybreaker's own call() would serialise these (danielfm/pybreaker#55)."""
    client = redis_client(redis_server.url, client_name="t", socket_timeout=5)
    guard, _ = _guard()
    reader = threading.Thread(target=lambda: guard.call_once(client.xread, {"s": "$"}, block=1500))
    reader.start()
    time.sleep(0.1)

    for _ in range(20):
        guard.call(client.ping)

    assert reader.is_alive(), "the pings waited for the blocked read"
    reader.join()


def test_a_probe_that_reaches_redis_half_opens_the_breaker_long_before_its_reset(tmp_path):
    server = RedisServer(tmp_path / "r")
    port = server.port
    client = redis_client(server.url, client_name="t")
    ping_client = redis_client(server.url, client_name="probe", socket_timeout=0.5)
    guard, states = _guard(threshold=1, reset=300.0, probe=ping_client.ping)
    server.stop()
    with pytest.raises(redis.ConnectionError):
        guard.call(client.ping)
    assert guard.state == "open"

    assert guard.probe() is False  # Redis still down: the breaker stays open
    assert guard.state == "open" and guard.refusing

    server = RedisServer(tmp_path / "r", port=port)
    try:
        started = time.monotonic()
        assert guard.probe() is True
        assert guard.state == "half-open"
        # The next operation is the trial: its success closes the breaker.
        assert guard.call_from_loop(client.ping) is True
        assert guard.state == "closed"
        assert time.monotonic() - started < 1.0
        assert states == [0, 2, 1, 0]
    finally:
        server.stop()


def test_after_a_probe_one_failed_operation_reopens_the_breaker_at_once(redis_server):
    """A Redis that answers PING but fails real work (slow, not down) costs one failure per probe."""
    client = redis_client(redis_server.url, client_name="t")
    guard, states = _guard(threshold=5, reset=300.0, probe=client.ping)
    failures = []

    def failing():
        failures.append(1)
        raise redis.TimeoutError("slow")

    for _ in range(5):
        with pytest.raises(redis.TimeoutError):
            guard.call_once(failing)
    assert guard.state == "open"
    assert guard.probe() is True and guard.state == "half-open"
    with pytest.raises(redis.TimeoutError):
        guard.call_once(failing)

    assert guard.state == "open"
    assert len(failures) == 6
    assert states == [0, 2, 1, 2]


def test_readonly_from_a_demoted_primary_is_an_outage_retried_on_a_new_connection(tmp_path):
    primary = RedisServer(tmp_path / "p")
    replica = RedisServer(tmp_path / "r", extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        client = redis_client(replica.url, client_name="t")
        guard, _ = _guard(threshold=10)
        attempts = []

        def write():
            attempts.append(client.connection_pool._created_connections)
            return client.xadd("s", {"a": "1"})

        with pytest.raises(redis.exceptions.ReadOnlyError):
            guard.call(write)
        # Retried (not a data error), and each try on a fresh connection, since a demoted
        # primary keeps answering READONLY on the connections it has.
        assert len(attempts) == FAST.max_tries
        assert attempts == sorted(attempts) and attempts[-1] > attempts[0]
    finally:
        replica.stop()
        primary.stop()
