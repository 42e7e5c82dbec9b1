"""A shard's reader: what it claims from dead consumers, and what it leaves to this worker."""

from __future__ import annotations

import threading
import time

from app.shared.resilience import RedisGuard
from app.shared.settings import RetryPolicy
from app.worker.delivery import Delivery
from app.worker.reading import ShardReader
from app.worker.terminals import Terminals
from tests.support.processes import wait_until
from tests.worker.test_recovery import GROUP, STREAM, _request


def reader_of(client, terminals: Terminals) -> ShardReader:
    return ShardReader(client, RedisGuard("w", RetryPolicy(1, 0.01, 1), 5, 30), terminals, STREAM, group=GROUP,
                       consumer="me", read_block_ms=100, claim_idle_seconds=0.1, reconnect_max_seconds=1,
                       shares_terminals=False, stopping=threading.Event(), on_group_lost=lambda: None)


def test_a_stalled_worker_does_not_claim_entries_it_still_holds(redis_server):
    client = redis_server.client()
    terminals = Terminals(5)
    reader = reader_of(client, terminals)
    reader.ensure_group()
    held, dropped = client.xadd(STREAM, _request("held")), client.xadd(STREAM, _request("dropped"))
    client.xreadgroup(GROUP, "me", {STREAM: ">"})
    terminals.hand_over([Delivery(STREAM, held, {}, 1)])
    time.sleep(0.2)

    claimed = reader.claim_orphans(10)

    assert [delivery.entry_id for delivery in claimed] == [dropped]
    assert claimed[0].deliveries == 2


def test_a_read_takes_only_as_many_entries_as_there_are_idle_terminals(redis_server):
    client = redis_server.client()
    terminals = Terminals(3)
    reader = reader_of(client, terminals)
    for index in range(5):
        client.xadd(STREAM, _request(f"r{index}"))

    assert terminals.take_one(timeout=0)
    taken = 1 + terminals.take_idle(terminals.count - 1)
    deliveries = reader.next_deliveries(taken, block=False)

    assert taken == 3 and len(deliveries) == 3
    assert client.xpending(STREAM, GROUP)["pending"] == 3
    assert terminals.take_idle(1) == 0


def _xreadgroup_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_xreadgroup", {"calls": 0})["calls"])


def _serve(terminals: Terminals, handled: list[Delivery]) -> None:
    while (delivery := terminals.next_delivery()) is not None:
        handled.append(delivery)
        terminals.finished(delivery)


def test_a_reader_sharing_terminals_spends_one_read_per_entry_on_a_quiet_shard(redis_server):
    """A blocking read that returns an entry added while it waited means the shard was
    empty: the next read blocks again at once instead of first finding it empty."""
    client = redis_server.client()
    terminals = Terminals(5)
    reader = ShardReader(client, RedisGuard("w", RetryPolicy(1, 0.01, 1), 5, 30), terminals, STREAM, group=GROUP,
                         consumer="me", read_block_ms=2000, claim_idle_seconds=60, reconnect_max_seconds=1,
                         shares_terminals=True, stopping=threading.Event(), on_group_lost=lambda: None)
    reader.ensure_group()
    handled: list[Delivery] = []
    threading.Thread(target=_serve, args=(terminals, handled), daemon=True).start()
    threading.Thread(target=reader.run, daemon=True).start()
    time.sleep(0.2)
    before = _xreadgroup_calls(client)

    for index in range(20):
        client.xadd(STREAM, _request(f"q{index}"))
        time.sleep(0.03)
    wait_until(lambda: len(handled) == 20, 5, what="every entry handled")
    reads = _xreadgroup_calls(client) - before
    reader.retired.set()
    terminals.close()

    assert reads <= 22, f"{reads} XREADGROUPs for 20 entries arriving one at a time"
