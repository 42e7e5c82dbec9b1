"""The fault schedule: drawn from the seed alone, varied, Redis faults one at a time."""

from __future__ import annotations

import itertools

from soak import schedule


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert schedule.draw(7, 300, 3.0) == schedule.draw(7, 300, 3.0)
    assert schedule.draw(7, 300, 3.0) != schedule.draw(8, 300, 3.0)


def test_five_minutes_bring_ten_faults_of_five_kinds_at_least() -> None:
    for seed in range(20):
        faults = schedule.draw(seed, 300, 3.0)
        assert len(faults) >= 10, seed
        assert len({fault.kind for fault in faults}) >= 5, seed


def test_every_kind_comes_before_any_comes_again() -> None:
    faults = schedule.draw(3, 1800, 3.0)
    first = [fault.kind for fault in faults[:len(schedule.KINDS)]]
    assert sorted(first) == sorted(schedule.KINDS)


def test_redis_faults_come_one_at_a_time_and_settle_and_nothing_runs_into_the_tail() -> None:
    for seed in range(20):
        faults = schedule.draw(seed, 600, 3.0)
        on_redis = [fault for fault in faults if fault.on_redis]
        for earlier, later in itertools.pairwise(on_redis):
            assert later.at >= earlier.ends + schedule.REDIS_SETTLE_SECONDS
        assert all(schedule.WARM_UP_SECONDS < fault.at for fault in faults)
        assert all(fault.ends <= 600 - schedule.QUIET_TAIL_SECONDS for fault in faults)


def test_frozen_processes_stay_frozen_longer_than_the_lease() -> None:
    frozen = [f for f in schedule.draw(11, 1800, 3.0) if f.kind.endswith("freeze")]
    assert frozen and all(fault.seconds > 3.0 for fault in frozen)
