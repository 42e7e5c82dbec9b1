"""Reply + acknowledge as one step, against a real Redis."""

from __future__ import annotations

import signal

import pytest
import redis

from app.shared import contract
from app.shared.replication import ReplicasBehind, ReplicaWait
from app.worker.replies import OutcomeWriter
from tests.support.processes import RedisServer, wait_until

STREAM, GROUP = "weather-requests", "weather-workers"
NO_WAIT = ReplicaWait(0, 100)


@pytest.fixture
def client(redis_server):
    client = redis_server.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    return client


def _deliver(client, fields=None) -> bytes:
    client.xadd(STREAM, fields or {"x": "1"})
    [[_, [(entry_id, _)]]] = client.xreadgroup(GROUP, "c", {STREAM: ">"}, count=1)
    return entry_id


def test_reply_is_written_with_ttl_then_acknowledged(client):
    writer = OutcomeWriter(client, STREAM, GROUP, dead_letter_maxlen=1000, replicas=NO_WAIT)
    entry_id = _deliver(client)

    writer.reply_and_ack("weather-responses:h:1:t", contract.Reply("r1", "ok", {"a": 1}), entry_id)

    [(_, fields)] = client.xrange("weather-responses:h:1:t")
    assert contract.Reply.from_fields(fields) == contract.Reply("r1", "ok", {"a": 1})
    assert 0 < client.ttl("weather-responses:h:1:t") <= contract.REPLY_STREAM_TTL_SECONDS
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_failed_reply_leaves_the_entry_pending(client):
    writer = OutcomeWriter(client, STREAM, GROUP, dead_letter_maxlen=1000, replicas=NO_WAIT)
    entry_id = _deliver(client)
    client.set("weather-responses:h:1:t", "not a stream")

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer.reply_and_ack("weather-responses:h:1:t", contract.Reply("r1", "ok", {}), entry_id)

    assert client.xpending(STREAM, GROUP)["pending"] == 1


def test_reply_stream_length_is_bounded(client):
    writer = OutcomeWriter(client, STREAM, GROUP, dead_letter_maxlen=1000, replicas=NO_WAIT)
    reply = contract.Reply("r", "ok", {})
    with client.pipeline(transaction=False):
        for _ in range(contract.REPLY_STREAM_MAXLEN + 3000):
            writer.reply_and_ack("weather-responses:h:1:t", reply, b"0-1")

    # Approximate trimming keeps whole radix-tree nodes (100 entries each by default).
    assert contract.REPLY_STREAM_MAXLEN <= client.xlen("weather-responses:h:1:t") < contract.REPLY_STREAM_MAXLEN + 200


def test_dead_letter_keeps_the_original_fields_and_says_why(client):
    writer = OutcomeWriter(client, STREAM, GROUP, dead_letter_maxlen=1000, replicas=NO_WAIT)
    entry_id = _deliver(client, {"garbage": b"\xff"})

    writer.dead_letter_and_ack(entry_id, {b"garbage": b"\xff"}, "poison: missing field 'v'", 1, "c")

    [(_, letter)] = client.xrange(STREAM + ":dlq")
    assert letter[b"garbage"] == b"\xff"
    assert letter[b"dlq_reason"] == b"poison: missing field 'v'"
    assert letter[b"dlq_source_id"] == entry_id
    assert letter[b"dlq_delivery_count"] == b"1"
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_with_wait_the_reply_and_ack_are_confirmed_by_a_replica_and_survive_an_empty_script_cache(
        client, redis_server, tmp_path):
    replica = RedisServer(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)])
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20, what="in sync")
        writer = OutcomeWriter(client, STREAM, GROUP, dead_letter_maxlen=1000, replicas=ReplicaWait(1, 1000))
        # A primary promoted in a failover knows none of the scripts: NOSCRIPT is answered by loading it again.
        client.script_flush()
        entry_id = _deliver(client)

        writer.reply_and_ack("weather-responses:h:1:t", contract.Reply("r1", "ok", {}), entry_id)

        # Confirmed by WAIT: the replica has both the reply and the acknowledgement already.
        assert replica.client().xlen("weather-responses:h:1:t") == 1
        assert replica.client().xpending(STREAM, GROUP)["pending"] == 0
        replica.signal(signal.SIGSTOP)
        try:
            with pytest.raises(ReplicasBehind):
                writer.reply_and_ack("weather-responses:h:1:t", contract.Reply("r2", "ok", {}), _deliver(client))
        finally:
            replica.signal(signal.SIGCONT)
    finally:
        replica.stop()
