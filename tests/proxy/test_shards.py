"""Which shards a proxy process writes to: skipped while paused, one trial when the pause is over."""

from __future__ import annotations

import pytest

from app.proxy.shards import FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS, ShardHealth
from tests.support.clocks import ManualClock

STREAMS = ["s:{a}", "s:{b}", "s:{c}"]



def test_healthy_shards_are_taken_in_turn():
    shards = ShardHealth(STREAMS, ManualClock())

    assert [shards.pick() for _ in range(6)] == STREAMS * 2


def test_a_failed_shard_is_skipped_until_its_pause_is_over_then_tried_once():
    clock = ManualClock()
    shards = ShardHealth(STREAMS, clock)
    shards.failed("s:{b}")

    assert [shards.pick() for _ in range(4)] == ["s:{a}", "s:{c}", "s:{a}", "s:{c}"]
    assert shards.paused == ["s:{b}"]

    clock.now += FIRST_PAUSE_SECONDS
    picked = [shards.pick() for _ in range(6)]
    # One request is the trial; the others keep away until it is answered.
    assert picked.count("s:{b}") == 1

    shards.succeeded("s:{b}")
    assert shards.paused == []
    assert [shards.pick() for _ in range(3)].count("s:{b}") == 1


def test_pauses_double_up_to_the_cap():
    clock = ManualClock()
    shards = ShardHealth(["only"], clock)
    pauses = []
    for _ in range(8):
        shards.failed("only")
        pauses.append(round(shards.seconds_until_one_is_free(), 6))
    assert pauses[:3] == [FIRST_PAUSE_SECONDS, 2 * FIRST_PAUSE_SECONDS, 4 * FIRST_PAUSE_SECONDS]
    assert max(pauses) == MAX_PAUSE_SECONDS


def test_no_shard_is_offered_while_all_are_paused():
    clock = ManualClock()
    shards = ShardHealth(STREAMS, clock)
    for stream in STREAMS:
        shards.failed(stream)

    assert shards.pick() is None
    assert shards.seconds_until_one_is_free() == pytest.approx(FIRST_PAUSE_SECONDS)
    clock.now += FIRST_PAUSE_SECONDS
    assert shards.pick() in STREAMS


def test_when_every_shard_is_paused_a_request_may_still_try_the_one_whose_pause_ends_first():
    clock = ManualClock()
    shards = ShardHealth(STREAMS, clock)
    for stream in ["s:{b}", "s:{c}", "s:{a}"]:
        shards.failed(stream)
        clock.now += 0.01

    assert shards.soonest_free() == "s:{b}"
    # It is that shard's trial now: the next request does not pile onto it.
    assert shards.soonest_free() == "s:{c}"


def test_a_shard_that_cannot_confirm_is_skipped_until_its_primary_says_it_can():
    clock = ManualClock()
    shards = ShardHealth(STREAMS, clock)
    shards.can_confirm("s:{b}", False)
    clock.now += 60  # no pause to run out: only its primary's answer brings it back
    assert {shards.pick() for _ in range(6)} == {"s:{a}", "s:{c}"}
    assert shards.cannot_take("s:{b}") == "replicas" and shards.state("s:{b}") == "unconfirmed"
    assert not shards.none_can_confirm
    shards.can_confirm("s:{b}", True)
    assert {shards.pick() for _ in range(6)} == set(STREAMS)
    assert shards.cannot_take("s:{b}") is None


def test_when_no_shard_can_confirm_none_is_offered_even_as_a_last_resort():
    shards = ShardHealth(STREAMS, ManualClock())
    for stream in STREAMS:
        shards.can_confirm(stream, False)
    assert shards.none_can_confirm
    assert shards.pick() is None and shards.soonest_free() is None


def test_a_paused_shard_refuses_what_is_pinned_to_it_until_its_pause_is_over():
    clock = ManualClock()
    shards = ShardHealth(STREAMS, clock)
    shards.failed("s:{a}")
    assert shards.cannot_take("s:{a}") == "paused" and shards.state("s:{a}") == "paused"
    assert shards.seconds_until_free("s:{a}") == pytest.approx(FIRST_PAUSE_SECONDS)
    clock.now += FIRST_PAUSE_SECONDS
    assert shards.cannot_take("s:{a}") is None
