"""Admission by expected wait: a request is queued only when it can be answered in time.

Every proxy judges from what every proxy sees alike: each request stream shard's backlog
(its consumer group's lag) and how fast the workers drain it (what each worker publishes
under contract.drain_key). A background loop reads both every REFRESH_SECONDS in one
pipeline per node; a request is judged from that copy plus what this process admitted since
(never a Redis round trip on the request path).

A shard's expected wait is its backlog over its share of the drain rate. A request is
admitted on a shard when that wait plus the work fits its limit:

- a share (ADMISSION_WAIT_SHARE) of the request's own deadline: room for a burst;
- but once a shard's queue has not been empty for STANDING_INTERVAL_SECONDS (a standing
  queue, CoDel's signal of overload rather than of a burst), only a smaller share
  (ADMISSION_STANDING_SHARE): the queue then stays short but long enough to keep every
  terminal busy, what cannot be served soon is refused at once instead of waiting for its
  deadline, and latency is back soon after the overload. Async requests (their own, longer deadline) are not held to it:
  queueing is what they asked for;
- urgency (RFC 9218 u=0..7) moves the limit: u<=2 keep the burst limit when the queue
  stands, u>=4 get a smaller share of it, so the least urgent are refused first. The
  urgent (u<=2) go to the shard's urgent lane, which workers read first: their wait is
  the lane's backlog alone; everyone else waits behind both.

A backlog that has not moved for a second is a figure nobody reads: a primary Sentinel has
replaced but not yet demoted still answers, and a process shedding on its frozen lag writes
nothing that would find that out. Its connections are then dropped, so the next read asks
where the primary is now.

A plain request skips shards over their limit for one under it; one whose shard is fixed
(Idempotency-Key) is judged by that shard alone. With no drain published yet (no worker,
or one that just started; scale from zero) a shard admits up to ADMISSION_COLD_BACKLOG
entries: enough to wake an autoscaler, bounded so that a system without workers does not
pile up work nobody will do in time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.proxy import metrics
from app.proxy.priority import DEFAULT_URGENCY, is_urgent
from app.shared import contract
from app.shared.routing import NodeWriter, Routed

log = logging.getLogger("app.proxy")

REFRESH_SECONDS = 0.2
# A field no worker writes (consumer names have no spaces).
_PRIMARY_PROBE_FIELD = "primary probe"
# A queue not empty for this long is standing: overload, not a burst.
STANDING_INTERVAL_SECONDS = 1.0
# The standing limit never goes below this: a queue must outlast a few reads (REFRESH_SECONDS)
# to keep every terminal busy, and a short deadline's tenth would not.
STANDING_FLOOR_SECONDS = 0.5
# A non-empty backlog unchanged this long is read from a node nobody else uses any more.
FROZEN_SECONDS = 1.0
# A worker's figures older than this are of a worker that stopped or froze.
DRAIN_STALE_MS = 10_000
# Retry-After when nothing says how long the backlog will take (no drain known).
COLD_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a request may go: ``deep`` shards are over its limit; ``refused`` when every
    shard it may use is. ``expected_wait`` is the shallowest usable shard's, in seconds."""

    refused: bool
    deep: frozenset[str] = frozenset()
    expected_wait: float = 0.0
    retry_after: int = 1
    reason: str = ""


ADMIT = Verdict(refused=False)


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    wait_share: float
    standing_share: float
    cold_backlog: int


class Admission:
    def __init__(self, reads: NodeWriter, streams: Sequence[str], drain_key: str, group: str,
                 policy: AdmissionPolicy, clock: Callable[[], float] = time.monotonic,
                 clock_ms: Callable[[], int] = contract.now_ms) -> None:
        self._reads = reads
        self.streams = list(streams)
        self._drain_key = drain_key
        self._group = group.encode()
        self._policy = policy
        self._clock = clock
        self._clock_ms = clock_ms
        # Each shard's urgent lane is a queue of its own, ahead of the shard.
        self._lanes = {stream: contract.urgent_lane(stream) for stream in self.streams}
        queues = [*self.streams, *self._lanes.values()]
        self._lag = dict.fromkeys(queues, 0)
        # Admitted by this process since its last read of the lag.
        self._since_read = dict.fromkeys(queues, 0)
        # When each shard's queue was last seen empty.
        self._empty_at = dict.fromkeys(self.streams, clock())
        self._reconnected_at = -math.inf
        # When each queue's lag last changed: a backlog workers drain never stays put.
        self._moved_at = dict.fromkeys(queues, clock())
        self._per_second = 0.0  # every live worker's drain, summed
        self._work_seconds = 0.0
        self._drain_read_at = -math.inf
        self._stopped = threading.Event()

    def start(self) -> Admission:
        threading.Thread(target=self._run, name="admission", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(REFRESH_SECONDS):
            try:
                self.refresh()
            except Exception:  # the loop must outlive any one bad answer
                log.exception("admission figures not refreshed")

    def refresh(self) -> None:
        queues = list(self._lag)
        items = [Routed(queue, _lag_of(queue)) for queue in queues]
        items.append(Routed(self._drain_key, _drain_of(self._drain_key)))
        results = self._reads.execute(items)
        now = self._clock()
        for queue, result in zip(queues, results, strict=False):
            if isinstance(result, BaseException):
                # A stream not created yet (ERR no such key), or its node is down: the
                # last figure plus what was admitted since.
                continue
            lag = self._lag_from(*result)
            # Redis gives no lag when entries were deleted in the undelivered range (or the
            # group's read counter was reset): unknown counts as none, so admission fails
            # open rather than refuse everything; MAX_INFLIGHT_PER_PROCESS still bounds it.
            if not lag or lag != self._lag[queue]:  # empty, or not stuck
                self._moved_at[queue] = now
            self._lag[queue] = lag or 0
            self._since_read[queue] = 0
        for stream in self.streams:
            if self._lag[stream] == 0 and self._lag[self._lanes[stream]] == 0:
                self._empty_at[stream] = now
            frozen = any(self._lag[queue] and now - self._moved_at[queue] >= FROZEN_SECONDS
                         for queue in (stream, self._lanes[stream]))
            if frozen and now - self._reconnected_at >= FROZEN_SECONDS:
                self._reconnected_at = now
                log.info("admission's figures stand still; reading from the primary anew", extra={"stream": stream})
                self._reads.reconnect(stream)
        drain = results[-1]
        if not isinstance(drain, BaseException):
            self._read_drain(drain[-1])
        metrics.DRAIN_PER_SECOND.set(self._per_second)
        metrics.EXPECTED_WAIT_SECONDS.set(min(self._wait_of(stream) for stream in self.streams))

    def _lag_from(self, groups: Any, length: Any, newest: Any) -> int | None:
        info = next((item for item in groups if item.get("name") == self._group), None) \
            if isinstance(groups, list) else None
        if info is None:
            return int(length or 0)  # no worker has ever read it: every entry waits
        if not newest or _entry_id(newest[0][0]) <= _entry_id(info.get("last-delivered-id")):
            # The newest entry is delivered: nothing waits, whatever the lag says. Redis's lag
            # is entries added minus the group's read counter, and that counter can stay behind
            # for good (seen after failovers: lag 113 on a drained stream), a backlog that
            # refused every request of its shard's Idempotency-Keys.
            return 0
        return None if info.get("lag") is None else int(info["lag"])

    def _read_drain(self, fields: Any) -> None:
        now_ms = self._clock_ms()
        live = [drain for raw in (fields or {}).values()
                if (drain := contract.Drain.decode(raw)) is not None and now_ms - drain.at_ms <= DRAIN_STALE_MS
                and drain.per_second > 0]
        self._per_second = sum(drain.per_second for drain in live)
        # The work of an average entry, weighted by how many each worker does.
        self._work_seconds = (sum(d.work_seconds * d.per_second for d in live) / self._per_second) if live else 0.0
        self._drain_read_at = self._clock()

    def admit(self, deadline_seconds: float, urgency: int = DEFAULT_URGENCY, *, patient: bool = False,
              only: str | None = None) -> Verdict:
        """``judge``, and an admitted request counted on its shard at once: requests judged
        together (greenlets of one process) must see each other, not only what Redis showed."""
        verdict = self.judge(deadline_seconds, urgency, patient=patient, only=only)
        if not verdict.refused:
            urgent = is_urgent(urgency)
            usable = [s for s in ([only] if only is not None else self.streams) if s not in verdict.deep]
            stream = min(usable, key=lambda s: self._backlog(s, urgent))
            self._since_read[self._lanes[stream] if urgent else stream] += 1
        return verdict

    def _backlog(self, stream: str, urgent: bool = False) -> int:
        """Entries ahead of a new one: the urgent lane's, and unless urgent the shard's too."""
        lane = self._lanes[stream]
        ahead = self._lag[lane] + self._since_read[lane]
        return ahead if urgent else ahead + self._lag[stream] + self._since_read[stream]

    def _wait_of(self, stream: str, urgent: bool = False) -> float:
        if self._per_second <= 0:
            return 0.0
        return self._backlog(stream, urgent) * len(self.streams) / self._per_second

    def judge(self, deadline_seconds: float, urgency: int = DEFAULT_URGENCY, *, patient: bool = False,
              only: str | None = None) -> Verdict:
        """Whether a request with this deadline may be queued now, and where not.
        ``patient``: an async request, not held to the standing queue's limit.
        ``only``: the one shard it may go to (Idempotency-Key)."""
        candidates = [only] if only is not None else self.streams
        urgent = is_urgent(urgency)
        if self._per_second <= 0:
            deep = frozenset(s for s in candidates if self._backlog(s) >= self._policy.cold_backlog)
            if len(deep) < len(candidates):
                return Verdict(refused=False, deep=deep)
            return Verdict(refused=True, deep=deep, retry_after=COLD_RETRY_AFTER_SECONDS, reason="cold")
        now = self._clock()
        burst = self._policy.wait_share * deadline_seconds
        scale = 1.0 if urgency <= DEFAULT_URGENCY else (8 - urgency) / (8 - DEFAULT_URGENCY)
        deep_set = set()
        best_wait, best_excess = math.inf, math.inf
        for stream in candidates:
            standing = now - self._empty_at[stream] > STANDING_INTERVAL_SECONDS
            limit = burst
            if standing and not patient and urgency >= DEFAULT_URGENCY:
                limit = min(burst, max(STANDING_FLOOR_SECONDS, self._policy.standing_share * deadline_seconds))
            limit *= scale
            wait = self._wait_of(stream, urgent)
            excess = wait + self._work_seconds - limit
            if excess > 0:
                deep_set.add(stream)
                best_excess = min(best_excess, excess)
            else:
                best_wait = min(best_wait, wait)
        deep = frozenset(deep_set)
        if len(deep) < len(candidates):
            return Verdict(refused=False, deep=deep, expected_wait=best_wait)
        wait = min(self._wait_of(stream, urgent) for stream in candidates)
        return Verdict(refused=True, deep=deep, expected_wait=wait,
                       retry_after=max(1, math.ceil(best_excess)), reason="wait")


class AdmitEverything:
    """ADMISSION_ENABLED=false: only MAX_INFLIGHT_PER_PROCESS limits what is queued."""

    def judge(self, deadline_seconds: float, urgency: int = DEFAULT_URGENCY, *, patient: bool = False,
              only: str | None = None) -> Verdict:
        return ADMIT

    admit = judge


def _lag_of(stream: str) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
        pipe.xrevrange(stream, count=1)
    return add


def _entry_id(raw: Any) -> tuple[int, int]:
    """A stream entry id as a comparable pair ("0-0" when there is none)."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "0-0")
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def _drain_of(key: str) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        # A write that changes nothing (no such field): a demoted primary refuses it with
        # READONLY, which sends the next round to the new primary. Reads alone would go on
        # reading a demoted primary's frozen figures, and a process shedding on them writes
        # nothing that could find out.
        pipe.hdel(key, _PRIMARY_PROBE_FIELD)
        pipe.hgetall(key)
    return add
