"""Background loops under one supervisor, in both services.

Each loop still handles what it expects itself (a Redis error: try again next round). What
nobody expected (a cluster client's SlotNotCoveredError, which is no RedisError; a bad
answer; a bug) used to end the loop's thread silently and leave the process running on
figures nobody refreshed any more: a proxy whose replica watch died refused keyed requests
for good. Here a loop that raises anything is logged with its traceback, counted (the
service's background loop restarts metric) and run again after a backoff; a loop that has
failed UNREADY_AFTER_FAILURES times in a row, each run shorter than HEALTHY_RUN_SECONDS, is
one that cannot run, and readiness says so until it has run that long again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.shared.resilience import LoopBackoff

log = logging.getLogger("app.loops")

HEALTHY_RUN_SECONDS = 10.0
UNREADY_AFTER_FAILURES = 3
FIRST_RESTART_SECONDS = 0.1
# Short beside every loop's own cadence: a lease keeper that waits longer than the claim
# idle time lets its entries be claimed and run twice.
LONGEST_RESTART_SECONDS = 5.0


@dataclass
class _State:
    failures_in_a_row: int = 0  # runs that ended in an exception, each shorter than HEALTHY_RUN_SECONDS
    running_since: float | None = None


class Loops:
    def __init__(self, on_restart: Callable[[str], None] = lambda name: None,
                 first_restart_seconds: float = FIRST_RESTART_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_restart = on_restart
        self._first_restart = first_restart_seconds
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def start(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        """Runs ``loop`` in a thread of its own until it returns (stopped on purpose)."""
        state = _State()
        with self._lock:
            self._states[name] = state
        thread = threading.Thread(target=self._supervise, args=(name, loop, state), name=name, daemon=True)
        thread.start()
        return thread

    def failing(self) -> list[str]:
        """Loops that cannot run: failed UNREADY_AFTER_FAILURES times in a row, not run
        HEALTHY_RUN_SECONDS since."""
        now = self._clock()
        with self._lock:
            return sorted(name for name, state in self._states.items()
                          if state.failures_in_a_row >= UNREADY_AFTER_FAILURES
                          and (state.running_since is None or now - state.running_since < HEALTHY_RUN_SECONDS))

    def _supervise(self, name: str, loop: Callable[[], None], state: _State) -> None:
        restarts = LoopBackoff(self._first_restart, LONGEST_RESTART_SECONDS)
        while True:
            started = state.running_since = self._clock()
            try:
                loop()
            except Exception:
                ran = self._clock() - started
                if ran >= HEALTHY_RUN_SECONDS:
                    state.failures_in_a_row = 0
                    restarts.reset()
                state.failures_in_a_row += 1
                state.running_since = None
                delay = restarts.next_delay()
                self._on_restart(name)
                log.exception("background loop failed; it runs again", extra={
                    "loop": name, "failures_in_a_row": state.failures_in_a_row, "retry_in_seconds": round(delay, 3)})
                time.sleep(delay)
                continue
            state.running_since = None
            state.failures_in_a_row = 0
            return
