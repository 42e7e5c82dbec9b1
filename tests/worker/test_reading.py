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


def reader_of(client, terminals: Terminals, *, consumer: str = "me", claim_idle_seconds: float = 0.1) -> ShardReader:
    return ShardReader(client, RedisGuard("w", RetryPolicy(1, 0.01, 1), 5, 30), terminals, STREAM, group=GROUP,
                       consumer=consumer, read_block_ms=100, claim_idle_seconds=claim_idle_seconds,
                       reconnect_max_seconds=1, shares_terminals=False, stopping=threading.Event(),
                       on_group_lost=lambda: None)


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


def test_the_prompt_lane_is_read_before_the_shard_and_its_orphans_claimed_first(redis_server):
    from app.shared import contract

    client = redis_server.client()
    terminals = Terminals(2)
    reader = reader_of(client, terminals)
    reader.ensure_group()
    lane = contract.prompt_lane(STREAM)
    normal = [client.xadd(STREAM, _request(f"n{i}")) for i in range(3)]
    urgent = client.xadd(lane, _request("urgent"))

    read = reader.next_deliveries(2, block=False)

    # The lane's entry first; Redis hands up to COUNT of each stream (the reader waits
    # for a terminal for the surplus rather than read it again).
    assert [(d.stream, d.entry_id) for d in read] == [(lane, urgent), (STREAM, normal[0]), (STREAM, normal[1])]
    time.sleep(0.2)
    other = reader_of(client, Terminals(1), consumer="other")
    claimed = other.claim_orphans(1)
    assert [(d.stream, d.entry_id) for d in claimed] == [(lane, urgent)]


def test_a_read_beyond_the_terminals_taken_holds_the_rest_leased_until_a_terminal_takes_it(redis_server):
    """Work longer than CLAIM_IDLE_SECONDS: an entry read but not yet in work that is not
    renewed is claimed and run a second time by another worker."""
    from app.shared import contract
    from app.worker.leases import LeaseKeeper

    client = redis_server.client()
    terminals = Terminals(1)
    reader = reader_of(client, terminals)
    reader.ensure_group()
    client.xadd(contract.prompt_lane(STREAM), _request("urgent"))
    waiting = client.xadd(STREAM, _request("normal"))
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        first = terminals.next_delivery()
        assert first is not None and first.stream == contract.prompt_lane(STREAM)
        time.sleep(0.3)
        # The shard's entry waits for a terminal (none is free), held and leased meanwhile.
        assert sorted(terminals.in_hand()) == sorted([first.key, (STREAM, waiting)])
        keeper = LeaseKeeper(client, RedisGuard("w", RetryPolicy(1, 0.01, 1), 5, 30), terminals, group=GROUP,
                             consumer="me", renew_seconds=1)
        assert keeper.renew() == 2
        # Idle 0.3 s before the renewal: another worker's to claim but for it.
        assert reader_of(client, Terminals(1), consumer="other").claim_orphans(5) == []
        terminals.finished(first)
        second = terminals.next_delivery()
        assert second is not None and second.stream == STREAM
        terminals.finished(second)
    finally:
        reader.retired.set()
        thread.join(timeout=5)


def test_with_a_backlog_in_the_shard_the_lane_is_read_first_and_the_shard_every_eighth_read(redis_server):
    """One terminal at a time (a saturated worker): the lane's entries are not held behind
    the shard's backlog, and the shard still gets its turn (admission counts on an eighth)."""
    from app.shared import contract
    from app.worker.reading import SHARD_TURN_EVERY

    client = redis_server.client()
    reader = reader_of(client, Terminals(1), claim_idle_seconds=60)  # a saturated worker: one terminal at a time
    reader.ensure_group()
    lane = contract.prompt_lane(STREAM)
    for index in range(40):
        client.xadd(STREAM, _request(f"n{index}"))
        client.xadd(lane, _request(f"p{index}"))
    time.sleep(0.01)

    first = reader.next_deliveries(1, block=True)  # both at once: the shard has a backlog
    assert [delivery.stream for delivery in first] == [lane, STREAM]
    streams = [delivery.stream for _ in range(2 * SHARD_TURN_EVERY)
               for delivery in reader.next_deliveries(1, block=True)]
    assert streams.count(STREAM) == 2 and streams.count(lane) == 2 * SHARD_TURN_EVERY - 2


def test_a_shard_whose_entries_waited_half_their_time_has_every_other_read_until_they_are_younger(redis_server):
    """A busy lane must not hold what admission let into the shard past its deadline: entries
    of the shard that come out having waited half their time turn every other read
    shard-first; the lane keeps the rest."""
    from app.shared import contract

    client = redis_server.client()
    reader = reader_of(client, Terminals(1), claim_idle_seconds=60)  # a saturated worker: one terminal at a time
    reader.ensure_group()
    lane = contract.prompt_lane(STREAM)
    # Six shard entries added 6 s ago with 10 s to go in all (60% of their time waited),
    # then two fresh ones; the lane always has fresh entries.
    added_ms = contract.now_ms() - 6_000
    for index in range(6):
        fields = contract.WeatherRequest(f"old{index}", "weather-responses:test:1:t", added_ms + 10_000,
                                         "Oslo", "Norway").to_fields()
        client.xadd(STREAM, fields, id=f"{added_ms}-{index + 1}")
    for index in range(2):
        client.xadd(STREAM, _request(f"new{index}"))
    for index in range(30):
        client.xadd(lane, _request(f"p{index}"))

    first = reader.next_deliveries(1, block=True)  # both at once: the shard's oldest comes out overdue
    assert [delivery.stream for delivery in first] == [lane, STREAM]
    order = [contract.WeatherRequest.from_fields(delivery.fields).request_id
             for _ in range(14) for delivery in reader.next_deliveries(1, block=True)]
    # The overdue ones within ten reads, the lane between them; then the lane again but
    # for the shard's regular eighth.
    assert order[:10] == ["p1", "old1", "p2", "old2", "p3", "old3", "p4", "old4", "p5", "old5"]
    assert order[10:12] == ["p6", "new0"]  # still overdue until a young one came out
    assert order[12:] == ["p7", "p8"]


def test_what_share_of_its_time_an_entry_waited_comes_from_its_id_and_deadline():
    from app.shared import contract

    def encoded(request: contract.WeatherRequest) -> dict[bytes, bytes]:
        return {name.encode(): value.encode() if isinstance(value, str) else value
                for name, value in request.to_fields().items()}

    plain = encoded(contract.WeatherRequest("r", "weather-responses:test:1:t", 11_000, "Oslo", "Norway"))
    assert contract.waited_share(b"1000-0", plain, 6_000) == 0.5
    assert contract.waited_share(b"1000-0", plain, 500) == 0.0  # a clock behind Redis's: no wait
    assert contract.waited_share(b"1000-0", {}, 6_000) == 0.0  # no deadline: the handler dead-letters it
    assert contract.waited_share(b"12000-0", plain, 13_000) == 0.0  # a deadline before it was added: clocks apart
    queued = encoded(contract.WeatherRequest("r", "weather-responses:test:1:t", 11_000, "Oslo", "Norway",
                                             result_key="weather-results:x", result_ttl_ms=1000))
    assert contract.waited_share(b"1000-0", queued, 6_000) == 0.0  # async: its deadline is of another kind


def test_a_read_that_raises_what_nobody_expected_gives_its_terminals_back(redis_server):
    """The supervisor runs the reader again (app.shared.loops); terminals it kept would stay
    taken for good, the worker reading nothing while every probe says it is fine."""
    import pytest

    terminals = Terminals(4)
    reader = reader_of(redis_server.client(), terminals)

    def broken(count: int, block: bool) -> list[Delivery]:
        raise KeyError("nobody expected this")

    reader.next_deliveries = broken  # type: ignore[method-assign]
    with pytest.raises(KeyError):
        reader.run()
    assert terminals.take_idle(4) == 4


def test_a_stopping_worker_lets_go_of_what_no_terminal_took(redis_server):
    """Held entries left pending for another worker are no longer renewed as this one's."""
    from app.shared import contract

    client = redis_server.client()
    terminals = Terminals(1)
    reader = reader_of(client, terminals)
    reader.ensure_group()
    client.xadd(contract.prompt_lane(STREAM), _request("urgent"))
    client.xadd(STREAM, _request("normal"))
    stopping = reader._stopping
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    first = terminals.next_delivery()
    assert first is not None
    wait_until(lambda: len(terminals.in_hand()) == 2, 5, what="the surplus held")
    stopping.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert terminals.in_hand() == [first.key]  # the one in work stays this worker's until it finishes
