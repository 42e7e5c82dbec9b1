"""How fast this worker drains the request streams, learned from its own recent entries,
and published for the proxies' admission (app.proxy.admission).

Two figures come from the same window of recent entries:

- the work an entry takes (the median): a terminal does not start an entry with less
  time left than that (its caller would be gone before the reply);
- the entries a second the terminals finish when every one is busy: terminals divided
  by how long an entry holds a terminal (the mean of the window less its slowest tenth:
  a failover that stalls the entries in hand for seconds is not a loss of capacity).
  Under CPU contention that hold time grows, so the figure falls to what the worker
  really does; below capacity it is what the worker could do, which is what a burst will
  meet. A completion rate would say only what was asked of it.

Every PUBLISH_SECONDS the figures go to one hash field per worker (contract.drain_key),
the key's TTL refreshed with it; fields of workers gone quiet are removed by the others:
a field none of them has seen change for STALE_SECONDS on its own clock (never by its
time stamp, written on another host's clock, nor by whether it can decode it: a worker of
another release writes another format).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import SlotNotCoveredError

from app.shared import contract
from app.shared.connections import RedisClient
from app.worker import metrics

log = logging.getLogger("app.worker")

PUBLISH_SECONDS = 1.0
# Enough entries for a stable median; few enough that a change of the work shows within seconds.
WINDOW = 128
# The slowest share of the window left out of the hold time: entries stalled by an outage.
STALLED_SHARE = 0.1
# The expected work is worked out again after this many more entries.
RECOMPUTE_AFTER = 16
# Fewer entries than this say too little: the worker publishes no rate (admission then
# treats the system as cold) and skips nothing.
MIN_SAMPLES = 8
# A field unchanged for this long is of a worker that stopped or froze.
STALE_SECONDS = 10.0
KEY_TTL_MS = 60_000


class DrainMeter:
    def __init__(self, terminals: int) -> None:
        self._terminals = terminals
        # (seconds of work, seconds the entry held its terminal); appends are atomic.
        self._recent: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._seen = 0
        self._expected: float | None = None
        self._expected_at = 0

    def finished(self, work_seconds: float, held_seconds: float) -> None:
        self._recent.append((work_seconds, held_seconds))
        self._seen += 1

    def expected_work_seconds(self) -> float | None:
        """Asked for every entry a terminal takes: the median of the window is worked out
        again only after RECOMPUTE_AFTER more entries, not on each one."""
        if self._expected is None or self._seen - self._expected_at >= RECOMPUTE_AFTER:
            recent = list(self._recent)
            if len(recent) < MIN_SAMPLES:
                return None
            self._expected = statistics.median(work for work, _ in recent)
            self._expected_at = self._seen
        return self._expected

    def per_second(self) -> float:
        """Entries a second when every terminal is busy; 0 while too few were seen."""
        recent = list(self._recent)
        if len(recent) < MIN_SAMPLES:
            return 0.0
        holds = sorted(held for _, held in recent)
        held = statistics.fmean(holds[:max(1, int(len(holds) * (1 - STALLED_SHARE)))])
        return self._terminals / max(held, 1e-4)

    def snapshot(self, at_ms: int) -> contract.Drain:
        return contract.Drain(at_ms, self.per_second(), self.expected_work_seconds() or 0.0, self._terminals)


class DrainPublisher:
    def __init__(self, client: RedisClient, meter: DrainMeter, key: str, consumer: str,
                 stopping: threading.Event, clock_ms: Callable[[], int] = contract.now_ms,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self._meter = meter
        self._key = key
        self._consumer = consumer
        self._stopping = stopping
        self._clock_ms = clock_ms
        self._clock = clock
        # The others' fields as last read, and when (this worker's clock) each last changed.
        self._others: dict[bytes, tuple[bytes, float]] = {}

    def run(self) -> None:
        while not self._stopping.wait(PUBLISH_SECONDS):
            try:
                self.publish_once()
            except (redis.RedisError, SlotNotCoveredError) as error:  # a cluster pipeline's: no RedisError
                log.debug("drain not published", extra={"error": repr(error)})
        self.withdraw()

    def publish_once(self) -> None:
        now_ms = self._clock_ms()
        drain = self._meter.snapshot(now_ms)
        metrics.DRAIN_PER_SECOND.set(drain.per_second)
        metrics.EXPECTED_WORK_SECONDS.set(drain.work_seconds)
        pipe: Any = self._redis.pipeline(transaction=False)
        pipe.hset(self._key, self._consumer, drain.encode())
        pipe.pexpire(self._key, KEY_TTL_MS)
        pipe.hgetall(self._key)
        *_, fields = pipe.execute()
        now = self._clock()
        mine = self._consumer.encode()
        known, self._others = self._others, {}
        for name, raw in fields.items():
            if name != mine:
                before = known.get(name)
                self._others[name] = (raw, before[1] if before is not None and before[0] == raw else now)
        stale = [name for name, (_, changed_at) in self._others.items() if now - changed_at > STALE_SECONDS]
        if stale:
            self._redis.hdel(self._key, *stale)
            for name in stale:
                del self._others[name]

    def withdraw(self) -> None:
        """A stopping worker drains nothing more: the proxies stop counting on it at once."""
        try:
            self._redis.hdel(self._key, self._consumer)
        except redis.RedisError as error:
            log.info("drain not withdrawn", extra={"error": repr(error)})
