"""Retries (backoff) and a circuit breaker (pybreaker) around Redis operations.

Only connection and timeout errors, and READONLY (a primary demoted in a failover),
are retried or counted as failures: a Redis error about the data (WRONGTYPE,
NOGROUP, a script error) is an answer, not an outage. An empty answer of a blocking
read is a success.

An open breaker does not wait out CIRCUIT_RESET_SECONDS when Redis is back sooner:
the services' background loops (and readiness checks) probe it while it is open, and
an answer moves the breaker to half-open, so the next operation is the trial: a
success closes it, a failure re-opens it at once. Recovery then takes about one
loop pause (REDIS_RECONNECT_MAX_SECONDS), and a Redis that answers PING but fails
real work costs one failed operation per probe, not a burst.

pybreaker's ``call`` holds the breaker's lock while the wrapped function runs
(danielfm/pybreaker#55), which would serialise every Redis operation of a process,
blocking reads included. So the operation runs outside the breaker, and only its
outcome is replayed through ``call``: pybreaker still owns states, counters,
timeouts and listeners, and its lock is held for microseconds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import backoff
import pybreaker
import redis
from redis.exceptions import ReadOnlyError

from app.shared.settings import RetryPolicy

log = logging.getLogger("app.resilience")

T = TypeVar("T")

RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, ReadOnlyError,
)
STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class CircuitOpen(redis.ConnectionError):
    """Redis is considered down; nothing was sent. ``retry_after`` is in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open; next attempt in {retry_after:.1f} s")
        self.retry_after = retry_after


def is_outage(error: BaseException) -> bool:
    return isinstance(error, RETRYABLE_ERRORS) and not isinstance(error, CircuitOpen)


class _StateReporter(pybreaker.CircuitBreakerListener):
    def __init__(self, component: str, on_state: Callable[[int], None]) -> None:
        self._component = component
        self._on_state = on_state

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old_name = old_state.name if old_state is not None else None
        level = logging.WARNING if new_state.name == pybreaker.STATE_OPEN else logging.INFO
        log.log(level, "circuit breaker state changed",
                extra={"component": self._component, "from": old_name, "to": new_state.name})
        self._on_state(STATE_VALUES[new_state.name])


def _invoke(operation: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return operation(*args, **kwargs)


def _replay(error: BaseException | None) -> None:
    if error is not None:
        raise error


class RedisGuard:
    """The one breaker of a service, and its retry policy."""

    def __init__(
        self,
        component: str,
        policy: RetryPolicy,
        failure_threshold: int,
        reset_seconds: float,
        on_state: Callable[[int], None] = lambda _value: None,
        probe: Callable[[], object] | None = None,
        on_success: Callable[[], None] = lambda: None,
    ) -> None:
        self.component = component
        # A shard's guard tells the process's guard that Redis answers (RedisRuntime.shard_guard).
        self._on_success = on_success
        # A short PING on a client of its own: it must not wait behind a blocked read.
        self._probe = probe
        self.policy = policy
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=failure_threshold,
            reset_timeout=reset_seconds,
            exclude=[lambda error: not is_outage(error)],
            listeners=[_StateReporter(component, on_state)],
            name=component,
        )
        # Built once: backoff reads the time budget per call from this (thread- or,
        # under gevent, greenlet-) local.
        self._budget = threading.local()
        self._retrying = backoff.on_exception(
            backoff.expo, RETRYABLE_ERRORS, max_tries=policy.max_tries, max_time=self._max_time,
            jitter=backoff.full_jitter, factor=policy.base_seconds, logger=None,
        )(_invoke)
        on_state(0)

    def _max_time(self) -> float:
        return float(getattr(self._budget, "seconds", self.policy.max_seconds))

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self._breaker.current_state)

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through; 0 when it would now."""
        if self.state != pybreaker.STATE_OPEN:
            return 0.0
        opened_at = self._breaker._state_storage.opened_at
        if opened_at is None:
            return 0.0
        reopen = opened_at + timedelta(seconds=self._breaker.reset_timeout)
        return max(0.0, (reopen - datetime.now(UTC)).total_seconds())

    @property
    def refusing(self) -> bool:
        """True while calls fail at once without reaching Redis."""
        return self.retry_after() > 0

    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after())))

    def probe(self) -> bool:
        """While open: ask Redis directly; an answer moves the breaker to half-open.

        True when calls may go through now. A probe that fails changes nothing (the
        breaker stays open; it is not a call)."""
        if not self.refusing:
            return True
        if self._probe is None:
            return False
        try:
            self._probe()
        except redis.RedisError as error:
            if is_outage(error):
                return False
            # Any other answer (NOAUTH, a script error) still means Redis is reachable.
        if self._breaker.current_state == pybreaker.STATE_OPEN:
            self._breaker.half_open()
        return True

    # -- calls -----------------------------------------------------------------

    def call(self, operation: Callable[..., T], *args: Any, budget_seconds: float | None = None,
             **kwargs: Any) -> T:
        """Run with retries, inside the breaker. `budget_seconds` caps the time spent retrying."""
        self._budget.seconds = (
            self.policy.max_seconds if budget_seconds is None else min(budget_seconds, self.policy.max_seconds)
        )
        result: T = self.call_once(self._retrying, operation, args, kwargs)
        return result

    def call_once(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run once, inside the breaker: for loops that pace their own retries."""
        wait = self.retry_after()
        if wait > 0:
            raise CircuitOpen(wait)
        try:
            result = operation(*args, **kwargs)
        except Exception as error:
            self.record(error)
            raise
        self.record(None)
        self._on_success()
        return result

    def call_from_loop(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call_once` for background loops: while open, probe first, so that a loop
        that paces its own retries also notices the recovery."""
        self.probe()
        return self.call_once(operation, *args, **kwargs)

    def confirm_reachable(self) -> None:
        """Redis answered a loop that does not count against the breaker: a half-open or
        open breaker closes, as a successful call would close it."""
        if self._breaker.current_state != pybreaker.STATE_CLOSED:
            self.probe()
            self.record(None)

    def record(self, error: BaseException | None) -> None:
        """The outcome of an operation (None: it succeeded), replayed through the breaker;
        public for operations that pace their own tries."""
        breaker = self._breaker
        if error is None and breaker.fail_counter == 0 and breaker.current_state == pybreaker.STATE_CLOSED:
            return  # the common case changes nothing: not worth pybreaker's lock and listeners
        try:
            self._breaker.call(_replay, error)
        except pybreaker.CircuitBreakerError:
            pass  # another caller opened it meanwhile; this outcome changes nothing
        except Exception:  # noqa: S110 - the replayed error itself; the caller raises it
            pass


class LoopBackoff:
    """Pacing for long-running loops while Redis is unreachable: exponential with full
    jitter, capped. An open breaker does not stretch it: the loop probes Redis."""

    def __init__(self, first_seconds: float, cap_seconds: float) -> None:
        self._first = first_seconds
        self._cap = cap_seconds
        self.reset()

    def reset(self) -> None:
        self._waits = backoff.expo(factor=self._first, max_value=self._cap)
        next(self._waits)  # the generator's first step only primes it

    def next_delay(self) -> float:
        return float(backoff.full_jitter(next(self._waits)))
