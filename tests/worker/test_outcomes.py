"""Replies and acknowledgements of a batch, and dead letters, against a real Redis."""

from __future__ import annotations

import signal

import pytest
import redis

from app.shared import contract
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard
from app.shared.routing import NodeWriter
from app.shared.settings import RetryPolicy
from app.shared.topology import Standalone
from app.worker.outcomes import Outcome, OutcomeWriter, ReplyTtl
from tests.support.processes import RedisServer, wait_until

STREAM, GROUP = "weather-requests", "weather-workers"
NO_WAIT = ReplicaWait(0, 100)


@pytest.fixture
def client(redis_server):
    client = redis_server.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    return client


def _writer(client, replicas=NO_WAIT) -> OutcomeWriter:
    topology = Standalone("redis://unused")  # only asked which node holds a key: the client itself
    guard = RedisGuard("test", RetryPolicy(max_tries=1, base_seconds=0.01, max_seconds=0.1), 5, 1.0)
    return OutcomeWriter(NodeWriter(topology, client, replicas), NodeWriter(topology, client, NO_WAIT), guard,
                         group=GROUP, consumer="c", dead_letter_maxlen=1000, reconnect_max_seconds=0.5)


def _deliver(client, fields=None) -> bytes:
    client.xadd(STREAM, fields or {"x": "1"})
    [[_, [(entry_id, _)]]] = client.xreadgroup(GROUP, "c", {STREAM: ">"}, count=1)
    return entry_id


def test_a_batch_is_replied_with_ttl_and_acknowledged_in_one_transaction_and_one_xack(client):
    writer = _writer(client)
    first, second, expired = _deliver(client), _deliver(client), _deliver(client)
    before = client.info("commandstats")

    errors = writer.write([
        Outcome(STREAM, first, "weather-responses:h:1:t", contract.Reply("r1", "ok", {"a": 1})),
        Outcome(STREAM, second, "weather-responses:h:2:t", contract.Reply("r2", "error", {"detail": "x"})),
        Outcome(STREAM, expired),  # acknowledged without a reply
    ])

    assert errors == [None, None, None]
    [(_, fields)] = client.xrange("weather-responses:h:1:t")
    assert contract.Reply.from_fields(fields) == contract.Reply("r1", "ok", {"a": 1})
    assert client.xlen("weather-responses:h:2:t") == 1
    for stream in ("weather-responses:h:1:t", "weather-responses:h:2:t"):
        assert 0 < client.ttl(stream) <= contract.REPLY_STREAM_TTL_SECONDS
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    after = client.info("commandstats")
    assert after["cmdstat_xack"]["calls"] - before.get("cmdstat_xack", {"calls": 0})["calls"] == 1
    assert after["cmdstat_exec"]["calls"] - before.get("cmdstat_exec", {"calls": 0})["calls"] == 1


def test_an_async_result_is_recorded_with_its_reply_and_an_expired_record_is_not_created_again(client):
    writer = _writer(client)
    record, gone = "weather-results:abc", "weather-results:gone"
    client.hset(record, mapping={"state": "working"})
    reply = contract.Reply("r1", "ok", {"t": 1})

    errors = writer.write([Outcome(STREAM, _deliver(client), "weather-responses:h:1:t", reply, record, 60_000),
                           Outcome(STREAM, _deliver(client), None, reply, gone, 60_000)])

    assert errors == [None, None]
    assert client.hget(record, "state") == b"done" and 0 < client.pttl(record) <= 60_000
    assert not client.exists(gone)
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_a_done_record_keeps_its_first_result_when_the_entry_ran_again(client):
    """An entry run twice (its worker or primary frozen past the lease) must not replace a
    result a caller may have read already: the 30-minute soak saw it change."""
    writer = _writer(client)
    record = "weather-results:twice"
    client.hset(record, mapping={"state": "working"})
    first, second = contract.Reply("r1", "ok", {"t": 1}), contract.Reply("r1", "ok", {"t": 2})

    writer.write([Outcome(STREAM, _deliver(client), None, first, record, 60_000)])
    shown = client.hgetall(record)
    writer.write([Outcome(STREAM, _deliver(client), None, second, record, 60_000)])
    writer.mark_started(record)

    assert client.hgetall(record) == shown


def test_the_ttl_is_set_once_per_refresh_period_not_with_every_reply(client):
    now = [1000.0]
    writer = _writer(client)
    writer.ttl = ReplyTtl(30, clock=lambda: now[0])
    stream = "weather-responses:h:1:t"

    def expires_sent(outcomes: int) -> int:
        before = client.info("commandstats").get("cmdstat_expire", {"calls": 0})["calls"]
        writer.write([Outcome(STREAM, _deliver(client), stream, contract.Reply("r", "ok", {}))
                      for _ in range(outcomes)])
        return client.info("commandstats")["cmdstat_expire"]["calls"] - before

    assert expires_sent(3) == 1  # a stream new to this worker gets its TTL with its first reply
    now[0] += 29
    assert expires_sent(2) == 0
    now[0] += 2
    assert expires_sent(1) == 1
    client.persist(stream)
    writer.ttl.forget_all()  # what the worker does when Redis lost its data
    assert expires_sent(1) == 1
    assert client.ttl(stream) > 0


def test_a_reply_refused_for_memory_leaves_the_batch_pending_and_nothing_written(client):
    writer = _writer(client)
    first, second = _deliver(client), _deliver(client)
    client.config_set("maxmemory", 1)  # noeviction: every write refused, as Redis at maxmemory does
    try:
        errors = writer.write([Outcome(STREAM, first, "weather-responses:h:1:t", contract.Reply("r1", "ok", {})),
                               Outcome(STREAM, second, "weather-responses:h:2:t", contract.Reply("r2", "ok", {}))])
    finally:
        client.config_set("maxmemory", 0)

    assert all(isinstance(error, redis.exceptions.OutOfMemoryError) for error in errors)
    assert not client.exists("weather-responses:h:1:t", "weather-responses:h:2:t")
    assert {e["message_id"] for e in client.xpending_range(STREAM, GROUP, "-", "+", 10)} == {first, second}


def test_a_reply_failing_inside_the_transaction_moves_its_entry_to_the_dead_letters(client):
    writer = _writer(client)
    broken = _deliver(client, {"v": "1", "id": "r1"})
    fine = _deliver(client)
    client.set("weather-responses:h:1:t", "not a stream")

    errors = writer.write([
        Outcome(STREAM, broken, "weather-responses:h:1:t", contract.Reply("r1", "ok", {}),
                fields={b"v": b"1", b"id": b"r1"}),
        Outcome(STREAM, fine, "weather-responses:h:2:t", contract.Reply("r2", "ok", {})),
    ])

    assert errors == [None, None]
    assert client.xlen("weather-responses:h:2:t") == 1
    # Acknowledged with its neighbours, so not left pending: kept, with the reason, where poison goes.
    [(_, letter)] = client.xrange(STREAM + ":dlq")
    assert letter[b"id"] == b"r1" and letter[b"dlq_source_id"] == broken
    assert b"WRONGTYPE" in letter[b"dlq_reason"]
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_reply_stream_length_is_bounded(client):
    writer = _writer(client)
    reply = contract.Reply("r", "ok", {})
    for _ in range((contract.REPLY_STREAM_MAXLEN + 3000) // 250):
        writer.write([Outcome(STREAM, b"0-1", "weather-responses:h:1:t", reply)] * 250)

    # Approximate trimming keeps whole radix-tree nodes (100 entries each by default).
    assert contract.REPLY_STREAM_MAXLEN <= client.xlen("weather-responses:h:1:t") < contract.REPLY_STREAM_MAXLEN + 200


def test_dead_letter_keeps_the_original_fields_and_says_why(client):
    writer = _writer(client)
    entry_id = _deliver(client, {"garbage": b"\xff"})

    writer.dead_letter_and_ack(STREAM, entry_id, {b"garbage": b"\xff"}, "poison: missing field 'v'", 1, "c")

    [(_, letter)] = client.xrange(STREAM + ":dlq")
    assert letter[b"garbage"] == b"\xff"
    assert letter[b"dlq_reason"] == b"poison: missing field 'v'"
    assert letter[b"dlq_source_id"] == entry_id
    assert letter[b"dlq_delivery_count"] == b"1"
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_with_wait_replies_are_confirmed_by_a_replica_and_dead_letters_survive_an_empty_script_cache(
        client, redis_server, tmp_path):
    replica = RedisServer(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)])
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20, what="in sync")
        writer = _writer(client, ReplicaWait(1, 1000))

        assert writer.write([Outcome(STREAM, _deliver(client), "weather-responses:h:1:t",
                                     contract.Reply("r1", "ok", {}))]) == [None]
        # Confirmed by WAIT: the replica has the reply already.
        assert replica.client().xlen("weather-responses:h:1:t") == 1

        # A primary promoted in a failover knows none of the scripts: dead letters do not depend on its cache.
        client.script_flush()
        writer.dead_letter_and_ack(STREAM, _deliver(client), {b"x": b"1"}, "poison", 1, "c")
        assert replica.client().xlen(STREAM + ":dlq") == 1

        replica.signal(signal.SIGSTOP)
        try:
            unconfirmed = _deliver(client)
            [error] = writer.write([Outcome(STREAM, unconfirmed, "weather-responses:h:1:t",
                                            contract.Reply("r2", "ok", {}))])
            # Reply and acknowledgement are one transaction: on the primary together, replicated
            # together, lost together (the entry pending again on a promoted replica). Not
            # written again, and no terminal held for it.
            assert error is None
            assert client.xpending(STREAM, GROUP)["pending"] == 0
            assert client.xlen("weather-responses:h:1:t") == 2
        finally:
            replica.signal(signal.SIGCONT)
    finally:
        replica.stop()
