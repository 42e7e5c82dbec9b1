"""Background loops under one supervisor: whatever a loop raises, it runs again."""

from __future__ import annotations

import threading

from app.shared.loops import HEALTHY_RUN_SECONDS, UNREADY_AFTER_FAILURES, Loops
from tests.support.clocks import ManualClock


def test_a_loop_that_raises_anything_runs_again_and_is_counted():
    restarts: list[str] = []
    runs = []
    done = threading.Event()

    def flaky() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise KeyError("nobody expected this")  # not a Redis error: it ended such loops before
        done.set()

    Loops(restarts.append, first_restart_seconds=0.01).start("flaky", flaky)

    assert done.wait(5)
    assert restarts == ["flaky", "flaky"]


def test_a_loop_that_keeps_failing_is_reported_until_it_has_run_long_enough():
    clock = ManualClock()
    loops = Loops(first_restart_seconds=0.001, clock=clock)
    failures = []
    healthy = threading.Event()
    release = threading.Event()

    def broken_then_fine() -> None:
        if len(failures) < UNREADY_AFTER_FAILURES:
            failures.append(1)
            raise RuntimeError("cannot run")
        healthy.set()
        release.wait(5)  # runs on, as a loop does

    loops.start("watch", broken_then_fine)
    assert healthy.wait(5)
    assert loops.failing() == ["watch"]  # running again, but not for long yet
    clock.now += HEALTHY_RUN_SECONDS
    assert loops.failing() == []
    release.set()


def test_a_loop_that_returns_is_done_and_never_reported():
    loops = Loops(first_restart_seconds=0.001)
    thread = loops.start("once", lambda: None)
    thread.join(5)
    assert not thread.is_alive()
    assert loops.failing() == []


def test_failures_apart_in_time_are_not_in_a_row():
    clock = ManualClock()
    loops = Loops(first_restart_seconds=0.001, clock=clock)
    calls: list[list[str]] = []
    finished = threading.Event()

    def fails_after_a_long_run() -> None:
        calls.append(loops.failing())
        if len(calls) > 2 * UNREADY_AFTER_FAILURES:
            finished.set()
            return
        clock.now += HEALTHY_RUN_SECONDS  # each run long enough: one failure each time, never three in a row
        raise RuntimeError("rare")

    loops.start("rare", fails_after_a_long_run)
    assert finished.wait(5)
    assert calls == [[]] * len(calls)
