"""Orphans, delivery counts and gone consumers, with a real worker process."""

from __future__ import annotations

import orjson
import pytest

from app.shared import contract
from app.worker.consumers import ConsumerJanitor
from tests.support.processes import wait_until

STREAM, GROUP = "weather-requests", "weather-workers"


def _request(request_id: str) -> dict:
    return contract.WeatherRequest(request_id, "weather-responses:test:1:t", contract.now_ms() + 60_000,
                                   "Oslo", "Norway").to_fields()


@pytest.mark.system
def test_entry_delivered_too_often_is_dead_lettered_not_processed(stack):
    client = stack.redis.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry_id = client.xadd(STREAM, _request("tired"))
    client.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    for _ in range(5):  # five more deliveries, as five crashed workers would leave it
        client.xclaim(STREAM, GROUP, "ghost", 0, [entry_id])

    worker = stack.worker("w", CLAIM_IDLE_SECONDS="1", PROCESSING_DELAY_MS="0", MAX_DELIVERIES="5").wait_ready()
    wait_until(lambda: client.xlen(STREAM + ":dlq") == 1, 10, what="dead letter")

    [(_, letter)] = client.xrange(STREAM + ":dlq")
    assert letter[b"dlq_source_id"] == entry_id
    assert letter[b"dlq_delivery_count"] == b"7"
    assert b"MAX_DELIVERIES" in letter[b"dlq_reason"]
    assert orjson.loads(letter[b"body"]) == {"city": "Oslo", "location": "Norway"}
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert not client.exists("weather-responses:test:1:t")
    assert worker.metric("weather_worker_dead_lettered_total", {"reason": "max_deliveries"}) == 1
    assert worker.metric("weather_worker_claimed_total") == 1


@pytest.mark.system
def test_a_dead_lettered_async_request_tells_its_poller(stack):
    client = stack.redis.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    key = contract.result_key(contract.new_async_id(STREAM))
    client.hset(key, mapping=dict(zip(*[iter(contract.accepted_record("", contract.now_ms()))] * 2, strict=True)))
    fields = contract.WeatherRequest("tired-async", "", contract.now_ms() + 60_000, "Oslo", "Norway",
                                     result_key=key, result_ttl_ms=60_000).to_fields()
    entry_id = client.xadd(STREAM, fields)
    client.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    for _ in range(5):
        client.xclaim(STREAM, GROUP, "ghost", 0, [entry_id])

    stack.worker("w", CLAIM_IDLE_SECONDS="1", PROCESSING_DELAY_MS="0", MAX_DELIVERIES="5").wait_ready()
    wait_until(lambda: client.hget(key, "state") == b"done", 10, what="the record filled in")

    record = contract.ResultRecord.from_hash("x", client.hgetall(key))
    assert record.reply is not None and not record.reply.ok
    assert record.reply.body["error"] == "dead_lettered" and "MAX_DELIVERIES" in record.reply.body["detail"]
    assert 0 < client.pttl(key) <= 60_000


@pytest.mark.system
def test_orphans_are_processed_and_gone_consumers_removed(stack):
    client = stack.redis.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    client.xgroup_createconsumer(STREAM, GROUP, "gone-empty")
    client.xadd(STREAM, _request("orphan"))
    client.xreadgroup(GROUP, "gone-busy", {STREAM: ">"})

    worker = stack.worker("alive", CLAIM_IDLE_SECONDS="1", CONSUMER_EXPIRY_SECONDS="2",
                          PROCESSING_DELAY_MS="0").wait_ready()
    wait_until(lambda: {c["name"] for c in client.xinfo_consumers(STREAM, GROUP)} == {b"alive"}, 15,
               interval=0.2, what="gone consumers removed")

    [(_, reply_fields)] = client.xrange("weather-responses:test:1:t")
    assert contract.Reply.from_fields(reply_fields).request_id == "orphan"
    assert worker.metric("weather_worker_consumers_removed_total") == 2
    assert worker.metric("weather_worker_processed_total", {"outcome": "ok"}) == 1


def test_janitor_keeps_consumers_with_pending_entries_and_itself(redis_server):
    client = redis_server.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    client.xadd(STREAM, {"x": "1"})
    client.xreadgroup(GROUP, "holding", {STREAM: ">"})
    client.xgroup_createconsumer(STREAM, GROUP, "empty")
    client.xgroup_createconsumer(STREAM, GROUP, "me")

    removed = ConsumerJanitor(client, GROUP, me="me").remove_gone(STREAM, idle_ms=0)

    assert removed == ["empty"]
    assert {c["name"] for c in client.xinfo_consumers(STREAM, GROUP)} == {b"holding", b"me"}
