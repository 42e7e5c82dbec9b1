"""Fair shares of the workers among callers, counted alike by every proxy process.

Each shard has two queues: its prompt lane (contract.urgent_lane), which workers read
first, and the shard itself. A synchronous request goes to the lane while its caller sends
no more than its share: PROMPT_SHARE of an equal part of the drain rate (every live
worker's, summed) among the callers active now. What a caller sends beyond that, and
every async request, goes to the shard: it is served from what the lanes leave, and
admitted only while it can still be served in time there. So a caller within its share
is never queued behind another's surge, whatever leaves a caller's share unused goes to
whoever has more to send, and a lone caller has all of it (PROMPT_SHARE keeps the lane
itself below capacity, so it never stands).

A caller's share is consumed in order of its own urgency (RFC 9218): its urgent requests
(u<=2) are counted apart and keep the lane up to the whole share, its default ones up to
the share, its least urgent (u>=4) up to (8-u)/5 of it. Urgency thus orders a caller's own
requests and never lets it pass another's share, unless the operator trusts the caller
(PRIORITY_TRUSTED_CALLERS): that caller's urgent requests always take the lane.

The counts live in Redis, in hashes named by the window of WINDOW_SECONDS on Redis's own
clock (every process names the same window however far its clock is off), one field per
caller: no stream, no metric label per caller, any number of callers. Each process adds
what it saw and reads back what it needs every time admission reads its figures (one
pipeline), and judges between reads from that copy plus what it counted since. A caller's
rate is the sliding sum of the last two windows. Counts that could not be synced for two
windows are dropped: fairness then falls back to what this process sees, never latches.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from app.proxy.priority import DEFAULT_URGENCY, is_urgent
from app.shared.routing import Routed, is_not_sent

WINDOW_SECONDS = 1.0
# A caller's lane share, of an equal part of the drain: the lanes together stay below capacity.
PROMPT_SHARE = 0.9
# Callers not seen by this process for this long are not read back any more, and no more
# than this many are (the most recent): beyond, a caller is judged by this process's count.
FORGET_SECONDS = 2 * WINDOW_SECONDS
MOST_READ_BACK = 2000
# The hashes outlive the two windows they are read in.
KEY_TTL_MS = int(4 * WINDOW_SECONDS * 1000)
_OFFERED, _PROMPT = "offered", "prompt"


class CallerShares:
    def __init__(self, base: str, trusted: Iterable[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._trusted = frozenset(trusted)
        self._clock = clock
        # Counted by this process since its last sync: (caller, urgent) of synchronous requests.
        self._pending: Counter[tuple[str, bool]] = Counter()
        self._pending_totals: Counter[str] = Counter()
        self._pending_since = clock()
        # As of the last sync: each caller's requests (all, urgent) in the previous and the
        # current window, and the totals (offered, prompt) alike; read as a sliding second.
        self._counts: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        self._totals: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
        self._window_fraction = 0.0
        self._callers = 0
        self._synced_at = -math.inf
        self._seen: dict[str, float] = {}
        # Redis's clock (seconds) minus this process's monotonic clock; None until first read.
        self._redis_offset: float | None = None
        self._sync_window = 0
        self._sync_callers: list[str] = []
        self._sent: tuple[dict[tuple[str, bool], int], dict[str, int], float] = ({}, {}, clock())

    # The request path: no Redis round trip.

    def offered(self, caller: str, urgency: int, *, synchronous: bool) -> None:
        """Counts a request before it is judged: refused ones are demand too."""
        self._pending_totals[_OFFERED] += 1
        if synchronous:
            self._seen.pop(caller, None)  # re-inserted last: the dict stays in order of recency
            self._seen[caller] = self._clock()
            self._pending[caller, False] += 1
            if is_urgent(urgency):
                self._pending[caller, True] += 1

    def within_share(self, caller: str, urgency: int, drain_per_second: float) -> bool:
        """Whether a synchronous request (counted by ``offered`` already) may take the lane."""
        urgent = is_urgent(urgency)
        if urgent and caller in self._trusted:
            return True
        if drain_per_second <= 0:
            return urgent  # no capacity known: as plain urgency would have it
        share = PROMPT_SHARE * drain_per_second / max(1, self._active_callers())
        if urgency > DEFAULT_URGENCY:
            share *= (8 - urgency) / (8 - DEFAULT_URGENCY)
        rate = self._rate_of(caller, urgent)
        if rate <= share * WINDOW_SECONDS:
            return True
        # A caller's first request of a second, when there are more callers than the workers
        # drain a second: the lane while the lanes in all stay below capacity.
        return rate <= 1 and self.prompt_per_second() < PROMPT_SHARE * drain_per_second

    def prompted(self, count: int = 1) -> None:
        """A request admitted to the lane (-1: one that queued nothing after all)."""
        self._pending_totals[_PROMPT] += count

    def offered_per_second(self) -> float:
        return self._total(0, _OFFERED)

    def prompt_per_second(self) -> float:
        return self._total(1, _PROMPT)

    def _total(self, index: int, name: str) -> float:
        synced = 0.0
        if self._fresh():
            earlier, later = self._totals
            synced = earlier[index] * self._earlier_weight() + later[index]
        return (synced + self._pending_totals[name]) / WINDOW_SECONDS

    def _rate_of(self, caller: str, urgent: bool) -> float:
        """Its requests in the sliding second ending now (what every process counted)."""
        synced = 0.0
        if self._fresh() and caller in self._counts:
            earlier, later = self._counts[caller]
            synced = earlier[urgent] * self._earlier_weight() + later[urgent]
        return synced + self._pending[caller, urgent]

    def _active_callers(self) -> int:
        if self._fresh():
            return max(self._callers, sum(1 for (_, urgent) in self._pending if not urgent))
        return sum(1 for (_, urgent) in self._pending if not urgent)

    def _fresh(self) -> bool:
        return self._clock() - self._synced_at <= 2 * WINDOW_SECONDS

    # The sync, run with admission's read.

    def sync_items(self) -> list[Routed]:
        """Adds this process's counts to the current window and reads back both windows."""
        now = self._clock()
        forgotten = [caller for caller, seen in self._seen.items() if now - seen > FORGET_SECONDS]
        for caller in forgotten:
            del self._seen[caller]
        if now - self._pending_since > 2 * WINDOW_SECONDS:
            # Not synced for this long: counts of windows gone by, that would read as a surge.
            self._pending.clear()
            self._pending_totals.clear()
            self._pending_since = now
        offset = time.time() - now if self._redis_offset is None else self._redis_offset
        window = math.floor((offset + now) / WINDOW_SECONDS)
        callers = list(self._seen)[-MOST_READ_BACK:]
        pending, totals = dict(self._pending), dict(self._pending_totals)
        self._sync_window, self._sync_callers = window, callers

        def current(pipe: Any) -> None:
            keys = self._keys(window)
            for (caller, urgent), count in pending.items():
                pipe.hincrby(keys[urgent], caller, count)
            for name, count in totals.items():
                pipe.hincrby(keys[2], name, count)
            for key in keys:
                pipe.pexpire(key, KEY_TTL_MS)
            self._reads(pipe, keys, callers)

        def previous(pipe: Any) -> None:
            self._reads(pipe, self._keys(window - 1), callers)

        self._sent = (pending, totals, now)
        return [Routed(self._keys(window)[0], current), Routed(self._keys(window - 1)[0], previous)]

    def absorb(self, current: Any, previous: Any, redis_time: Any = None) -> None:
        """The sync's answers (each a list of replies, or an error) and Redis's TIME, read
        from one node (the drain key's: another node's clock may differ). The counts sent
        are taken off what is pending unless they surely were not written (an unknown fate
        counts as written: counting a surge twice would push callers off their lane)."""
        pending, totals, sent_at = self._sent
        if not isinstance(redis_time, BaseException) and redis_time:
            seconds, microseconds = redis_time
            self._redis_offset = int(seconds) + int(microseconds) / 1e6 - self._clock()
        if isinstance(current, BaseException) and is_not_sent(current):
            return
        self._pending.subtract(pending)
        self._pending_totals.subtract(totals)
        self._pending = +self._pending
        self._pending_totals = +self._pending_totals
        self._pending_since = sent_at
        if self._redis_offset is None:  # no TIME read yet: this host's wall clock meanwhile
            self._redis_offset = time.time() - self._clock()
        if isinstance(current, BaseException):
            return
        now_reads = self._parse(current[-self._read_count():])
        before = self._parse(previous[-self._read_count():]) if not isinstance(previous, BaseException) else None
        # How far into the current window the counts were read: the previous window's part
        # of a sliding second, which shrinks as time goes on until the next sync.
        self._window_fraction = min(1.0, max(0.0, (self._redis_offset + self._clock()) / WINDOW_SECONDS
                                             - self._sync_window))
        counts: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        for index, caller in enumerate(self._sync_callers):
            counts[caller] = (before[0][index] if before else (0, 0), now_reads[0][index])
        self._counts = counts
        self._callers = max(now_reads[1], before[1] if before else 0)
        self._totals = (before[2] if before else (0, 0), now_reads[2])
        self._synced_at = self._clock()

    def _earlier_weight(self) -> float:
        """The previous window's weight in a sliding second ending now."""
        since = (self._clock() - self._synced_at) / WINDOW_SECONDS
        return max(0.0, 1.0 - self._window_fraction - since)

    def _keys(self, window: int) -> tuple[str, str, str]:
        # One hash tag per window: a window's three hashes share a slot, so a node.
        tag = f"{{{self._base}:{window}}}"
        return f"{self._base}:callers:{tag}", f"{self._base}:urgent-callers:{tag}", f"{self._base}:offered:{tag}"

    def _read_count(self) -> int:
        return 4 if self._sync_callers else 2

    def _reads(self, pipe: Any, keys: tuple[str, str, str], callers: list[str]) -> None:
        if callers:
            pipe.hmget(keys[0], callers)
            pipe.hmget(keys[1], callers)
        pipe.hlen(keys[0])
        pipe.hmget(keys[2], [_OFFERED, _PROMPT])

    def _parse(self, replies: list[Any]) -> tuple[list[tuple[int, int]], int, tuple[int, int]]:
        if self._sync_callers:
            every, urgent, callers, totals = replies
            counts = [(int(a or 0), int(u or 0)) for a, u in zip(every, urgent, strict=True)]
        else:
            callers, totals = replies
            counts = []
        return counts, int(callers or 0), (int(totals[0] or 0), int(totals[1] or 0))
