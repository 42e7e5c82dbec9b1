"""Fair shares of the workers among callers, counted alike by every proxy process.

Each shard has two queues: its prompt lane (contract.prompt_lane), which workers read
first, and the shard itself. With one caller active (by every proxy's count) there is
nobody to share with: its synchronous requests take the lane, ahead of its async work,
except under overload (more offered than OVERLOAD_RATIO times the drain, two windows
running) and while entries queue in the lane and it sends urgent ones (u<=2): then only its
urgent ones do, and its others wait in the shard (with its async work, in arrival order:
two queues order three kinds of request no better). With
several, a caller's synchronous requests take the lane up to its share:
PROMPT_SHARE of an equal part of the drain rate (every live worker's, summed) among the
callers active now. What a caller sends beyond that, and every async request, goes to the
shard: it is served from what the lanes leave, and admitted only while it can still be
served in time there. So a caller within its share is never queued behind another's surge,
whatever a caller leaves of its share goes to whoever has more to send, and a lone caller
has all of it (through the shard). PROMPT_SHARE keeps the lanes together below capacity;
only a trusted caller's urgent requests may take more.

A caller's share is taken in order of its own urgency (RFC 9218): its urgent requests
(u<=2) may fill the whole share, its default ones leave room for as many urgent ones again
as it sent of late, its least urgent (u>=4) have (8-u)/5 of the share. Urgency thus orders a
caller's own requests and never lets it pass another's share, unless the operator trusts
the caller (PRIORITY_TRUSTED_CALLERS): that caller's urgent requests always take the lane.

The counts live in Redis, in hashes named by the window of WINDOW_SECONDS on Redis's own
clock (every process names the same window however far its clock is off), one field per
caller: no stream, no metric label per caller, any number of callers. Each process adds
what it counted and reads back what it needs every time admission reads its figures (one
pipeline), and judges between reads from that copy plus what it counted since. A rate is
the count of the previous window and of the current one so far over the time they span.
Counts that could not be synced for two windows are dropped: fairness then falls back to
what this process sees, never latches.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.proxy.priority import DEFAULT_URGENCY, is_urgent
from app.shared.routing import Routed, is_not_sent

WINDOW_SECONDS = 1.0
# A caller's lane share, of an equal part of the drain: the lanes together stay below capacity.
PROMPT_SHARE = 0.9
# Offered beyond this many times the drain rate, two windows running, is overload (admission
# then holds what callers send beyond their share to a short wait). A closed loop offers
# what it is served, never more: it never counts as one (the margin covers the error of the
# drain figure and of the rate, counted in batches of admission's reads).
OVERLOAD_RATIO = 1.5
# Callers not seen by this process for this long are not read back any more, and no more
# than this many are (the most recent): beyond, a caller is judged by this process's count.
FORGET_SECONDS = 2 * WINDOW_SECONDS
MOST_READ_BACK = 2000
# The hashes outlive the two windows they are read in.
KEY_TTL_MS = int(4 * WINDOW_SECONDS * 1000)
# What each window counts: requests offered per caller (how many callers are active, async
# work included), lane places taken per caller, urgent ones per caller; and in all.
_OFFERED, _PROMPT, _URGENT = 0, 1, 2
_TOTAL_FIELDS = ("offered", "prompt")


@dataclass
class _Counts:
    """What one process counted since its last sync."""

    callers: list[Counter[str]] = field(default_factory=lambda: [Counter(), Counter(), Counter()])
    totals: Counter[str] = field(default_factory=Counter)

    def taken_off(self, sent: _Counts) -> None:
        for mine, theirs in zip(self.callers, sent.callers, strict=True):
            mine.subtract(theirs)
        self.totals.subtract(sent.totals)
        self.callers = [+counter for counter in self.callers]
        self.totals = +self.totals

    def copy(self) -> _Counts:
        return _Counts([Counter(counter) for counter in self.callers], Counter(self.totals))


@dataclass(frozen=True)
class _Window:
    """One window's counts as read back: per caller read (offered, prompt, urgent), the
    callers that offered any, and the totals (offered, prompt)."""

    callers: dict[str, tuple[int, int, int]]
    active: int
    totals: tuple[int, int]


_EMPTY = _Window({}, 0, (0, 0))


class CallerShares:
    def __init__(self, base: str, trusted: Iterable[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._trusted = frozenset(trusted)
        self._clock = clock
        self._pending = _Counts()
        self._pending_since = clock()
        # The last sync's counts surely not written (its node unreachable): pending ages out.
        self._unsynced = False
        self._sent = (_Counts(), clock())
        # As of the last sync: the previous window and the current one, and how far into
        # the current one (seconds) they were read.
        self._earlier = self._later = _EMPTY
        self._into_window = 0.0
        self._synced_at = -math.inf
        # Synchronous callers this process saw, most recent last, and when.
        self._seen: dict[str, float] = {}
        self._was_overloaded = False
        # Redis's clock (seconds) minus this process's monotonic clock; None until first read.
        self._redis_offset: float | None = None
        self._sync_window = 0
        self._sync_callers: list[str] = []

    # The request path: no Redis round trip.

    def offered(self, caller: str, urgency: int, *, synchronous: bool) -> None:
        """Counts a request before it is judged: refused ones are demand too."""
        self._pending.totals[_TOTAL_FIELDS[_OFFERED]] += 1
        self._pending.callers[_OFFERED][caller] += 1  # an active caller, async work too
        if synchronous:
            self._seen.pop(caller, None)  # re-inserted last: the dict stays in order of recency
            self._seen[caller] = self._clock()

    def within_share(self, caller: str, urgency: int, drain_per_second: float, lane_queued: bool = False) -> bool:
        """Whether a synchronous request (counted by ``offered`` already) may take the lane.
        ``lane_queued``: entries wait in the lane it would take."""
        urgent = is_urgent(urgency)
        if urgent and caller in self._trusted:
            return True
        callers = self.active_callers(caller)
        if drain_per_second <= 0 or callers <= 1:
            # Nobody to share with (or no capacity known): the lane, ahead of its async work,
            # in arrival order (a closed loop's included); under overload, and while entries
            # queue in the lane and it sends urgent requests of late, only its urgent ones,
            # which then pass its others (from the start: an overload takes a second or two
            # to be seen); with the lane empty nothing is to be passed.
            urgent_first = self._was_overloaded or (lane_queued and self._rate_of(caller, _URGENT) > 0)
            return urgent or drain_per_second <= 0 or not urgent_first
        share = PROMPT_SHARE * drain_per_second / callers
        if urgency > DEFAULT_URGENCY:
            share *= (8 - urgency) / (8 - DEFAULT_URGENCY)
        taken = self._rate_of(caller, _PROMPT)
        # Its urgent requests may take the whole share; its others leave as much again as
        # the urgent ones took, for the urgent ones still to come.
        if taken + (0.0 if urgent else self._rate_of(caller, _URGENT)) < share:
            return True
        # More callers than the lanes hold a second: each caller's first of a second still
        # takes the lane while the lanes in all stay below capacity.
        return taken < 1 / WINDOW_SECONDS and self.prompt_per_second() < PROMPT_SHARE * drain_per_second

    def prompted(self, caller: str, urgency: int, count: int = 1) -> None:
        """A synchronous request admitted to the lane (-1: one given back: it queued nothing)."""
        self._pending.totals[_TOTAL_FIELDS[_PROMPT]] += count
        self._pending.callers[_PROMPT][caller] += count
        if is_urgent(urgency):
            self._pending.callers[_URGENT][caller] += count

    def overloaded(self, drain_per_second: float) -> bool:
        """More offered (by every proxy, refusals included) than OVERLOAD_RATIO times the
        drain, in the previous window and in the current one so far (at least half a window
        of it): a closed loop's first burst (all its clients at once) fills one window only,
        and what it offers after is what it is served."""
        limit = OVERLOAD_RATIO * drain_per_second
        if drain_per_second <= 0:
            verdict = False  # nothing known to be drained: cold, not overloaded
        elif not self._fresh():
            verdict = self.offered_per_second() > limit
        else:
            into = min(WINDOW_SECONDS, self._into_window + self._clock() - self._synced_at)
            earlier = self._earlier.totals[_OFFERED] / WINDOW_SECONDS
            later = (self._later.totals[_OFFERED] + self._pending.totals[_TOTAL_FIELDS[_OFFERED]]) / max(into, 1e-3)
            # Early in a window its count says little yet: the verdict of before stands
            # while the previous window agrees with it.
            verdict = earlier > limit and (later > limit if into >= WINDOW_SECONDS / 2 else self._was_overloaded)
        self._was_overloaded = verdict
        return verdict

    def offered_per_second(self) -> float:
        """Requests a second offered to every proxy, over the last one to two seconds."""
        return self._rate(lambda window: window.totals[_OFFERED], self._pending.totals[_TOTAL_FIELDS[_OFFERED]])

    def prompt_per_second(self) -> float:
        return self._rate(lambda window: window.totals[_PROMPT], self._pending.totals[_TOTAL_FIELDS[_PROMPT]])

    def _rate_of(self, caller: str, what: int) -> float:
        return self._rate(lambda window: window.callers.get(caller, (0, 0, 0))[what],
                          self._pending.callers[what][caller])

    def _rate(self, count: Callable[[_Window], int], pending: int) -> float:
        """Counted in the previous window and the current one so far, over the time they
        span (at least a window: a burst within the first moments is not a rate yet)."""
        if not self._fresh():  # this process's own counts, over the time they cover
            return max(0, pending) / max(WINDOW_SECONDS, self._clock() - self._pending_since)
        span = WINDOW_SECONDS + min(WINDOW_SECONDS, self._into_window + self._clock() - self._synced_at)
        return max(0, count(self._earlier) + count(self._later) + pending) / span

    def active_callers(self, caller: str = "") -> int:
        """Callers with requests in the last one to two seconds (by every proxy's count),
        ``caller`` among them even when the counts read back do not know it yet."""
        here = len(self._pending.callers[_OFFERED])
        if not self._fresh():
            return max(here, 1 if caller else 0)
        known = max(self._earlier.active, self._later.active)
        unknown = caller and not any(window.callers.get(caller, (0, 0, 0))[_OFFERED]
                                     for window in (self._earlier, self._later))
        return max(known + (1 if unknown else 0), here)

    def sharing(self, caller: str, drain_per_second: float) -> bool:
        """Whether callers share the lane now: a drain known and another caller active."""
        return drain_per_second > 0 and self.active_callers(caller) > 1

    def _fresh(self) -> bool:
        return self._clock() - self._synced_at <= 2 * WINDOW_SECONDS

    # The sync, run with admission's read.

    def sync_items(self) -> list[Routed]:
        """Adds this process's counts to the current window and reads back both windows."""
        now = self._clock()
        for caller in [caller for caller, seen in self._seen.items() if now - seen > FORGET_SECONDS]:
            del self._seen[caller]
        if self._unsynced and now - self._pending_since > 2 * WINDOW_SECONDS:
            # Not synced for this long: counts of windows gone by, that would read as a surge.
            self._pending = _Counts()
            self._pending_since = now
        offset = time.time() - now if self._redis_offset is None else self._redis_offset
        window = math.floor((offset + now) / WINDOW_SECONDS)
        callers = list(self._seen)[-MOST_READ_BACK:]
        sent = self._pending.copy()
        self._sync_window, self._sync_callers, self._sent = window, callers, (sent, now)

        def current(pipe: Any) -> None:
            keys = self._keys(window)
            for key, counter in zip(keys, sent.callers, strict=False):
                for caller, count in counter.items():
                    pipe.hincrby(key, caller, count)
            for name, count in sent.totals.items():
                pipe.hincrby(keys[-1], name, count)
            for key in keys:
                pipe.pexpire(key, KEY_TTL_MS)
            self._reads(pipe, keys, callers)

        def previous(pipe: Any) -> None:
            self._reads(pipe, self._keys(window - 1), callers)

        return [Routed(self._keys(window)[0], current), Routed(self._keys(window - 1)[0], previous)]

    def absorb(self, current: Any, previous: Any, redis_time: Any = None) -> None:
        """The sync's answers (each a list of replies, or an error) and Redis's TIME, read
        from one node (the drain key's: another node's clock may differ). The counts sent
        are taken off what is pending unless they surely were not written (an unknown fate
        counts as written: counting a surge twice would push callers off their lane)."""
        if redis_time and not isinstance(redis_time, BaseException):
            seconds, microseconds = redis_time
            self._redis_offset = int(seconds) + int(microseconds) / 1e6 - self._clock()
        self._unsynced = isinstance(current, BaseException) and is_not_sent(current)
        if self._unsynced:
            return
        sent, sent_at = self._sent
        self._pending.taken_off(sent)
        self._pending_since = sent_at
        if self._redis_offset is None:  # no TIME read yet: this host's wall clock meanwhile
            self._redis_offset = time.time() - self._clock()
        if isinstance(current, BaseException):
            return
        reads = 5 if self._sync_callers else 2
        self._later = self._parse(current[-reads:])
        self._earlier = _EMPTY if isinstance(previous, BaseException) else self._parse(previous[-reads:])
        self._into_window = min(WINDOW_SECONDS, max(0.0, self._redis_offset + self._clock()
                                                     - self._sync_window * WINDOW_SECONDS))
        self._synced_at = self._clock()

    def _keys(self, window: int) -> tuple[str, str, str, str]:
        # One hash tag per window: a window's hashes share a slot, so a node.
        tag = f"{{{self._base}:{window}}}"
        return (f"{self._base}:callers:{tag}", f"{self._base}:prompt-callers:{tag}",
                f"{self._base}:urgent-callers:{tag}", f"{self._base}:offered:{tag}")

    def _reads(self, pipe: Any, keys: tuple[str, ...], callers: list[str]) -> None:
        if callers:
            for key in keys[:3]:
                pipe.hmget(key, callers)
        pipe.hlen(keys[0])
        pipe.hmget(keys[-1], list(_TOTAL_FIELDS))

    def _parse(self, replies: list[Any]) -> _Window:
        *per_caller, active, totals = replies
        counts = {}
        if per_caller:
            for caller, offered, prompt, urgent in zip(self._sync_callers, *per_caller, strict=True):
                counts[caller] = (int(offered or 0), int(prompt or 0), int(urgent or 0))
        return _Window(counts, int(active or 0), (int(totals[0] or 0), int(totals[1] or 0)))
