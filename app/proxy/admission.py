"""Admission by expected wait: a request is queued only when it can be answered in time.

Every proxy judges from what every proxy sees alike: each request stream shard's backlog
(its consumer group's lag) and how fast the workers drain it (what each worker publishes
under contract.drain_key). A background loop reads both every REFRESH_SECONDS in one
pipeline per node, with the callers' counts of app.proxy.fairness; a request is judged
from that copy plus what this process admitted since (never a Redis round trip on the
request path).

Where a request goes is app.proxy.fairness's decision: a synchronous one to its shard's
prompt lane while its caller has taken less than its share (alone: unless overloaded or
passed by its urgent ones, then only those), else, and every async one, to the shard. It
is then admitted when the time it is expected to wait there fits what its deadline leaves
after the work:

- an empty queue admits whatever the work takes: nothing waits ahead of it (the worker's
  late skip judges the rest);
- the lane's wait is its backlog over the shard's share of the drain rate; the shard's
  adds its own backlog over what the lanes leave of that rate (at least SHARD_TURN_SHARE:
  workers never starve the shard);
- a share (ADMISSION_WAIT_SHARE) of the deadline less the work: room for a burst, and for
  a closed loop, whose queue can never outgrow its own clients;
- but under overload (more offered than OVERLOAD_RATIO times what the workers drain, two
  windows running, by every proxy's count: app.proxy.fairness; a closed loop never counts
  as one), once the shard's queue has not been empty for STANDING_INTERVAL_SECONDS
  (CoDel's standing queue), a synchronous request off the lane of default or lower urgency
  may wait only a smaller share (ADMISSION_STANDING_SHARE) of its deadline: what cannot be
  served soon is refused at once, and latency is back soon after the overload. Async
  requests (their own, longer deadline) are not held to it: queueing is what they asked for;
- urgency (RFC 9218 u=0..7) off the lane moves the limit: u>=4 get a smaller part of it,
  so the least urgent are refused first.

A refusal is counted as "share" when its caller was off the lane because others have their
shares, else as "wait".

The figures age: a queue whose figures cannot be read for FIGURES_STALE_SECONDS counts
only what this process admitted since (admission then fails open, MAX_INFLIGHT_PER_PROCESS
still bounds it), a drain unread for as long is no drain (cold), and a worker's drain field
counts as live while it changes, judged on this process's own clock (never by comparing
clocks of two hosts). Redis's lag is entries added less the group's read counter, which was
seen to stay behind for good after failovers: what it says of a drained queue is learnt as
that queue's phantom and taken off its lag until the next time it is drained.

A backlog that has not moved for a second since workers were last seen draining is a figure
nobody reads: a primary Sentinel has replaced but not yet demoted still answers, and a
process shedding on its frozen lag writes nothing that would find that out. Admission's
connections (its own) and the enqueue path's idle ones to that node are then dropped, so
the next read and write ask where the primary is now. A backlog waiting for a first worker
(scale from zero) never moved while a drain was known: nothing is dropped for it.

A plain request skips shards over their limit for one under it; one whose shard is fixed
(Idempotency-Key) is judged by that shard alone. With no drain published yet (no worker,
or one that just started; scale from zero) a shard admits up to ADMISSION_COLD_BACKLOG
entries: enough to wake an autoscaler, bounded so that a system without workers does not
pile up work nobody will do in time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.proxy import metrics
from app.proxy.fairness import CallerShares
from app.proxy.priority import DEFAULT_URGENCY, is_urgent
from app.shared import contract
from app.shared.loops import Loops
from app.shared.routing import NodeWriter, Routed

log = logging.getLogger("app.proxy")
_FAIRNESS_ERRORS = metrics.REDIS_ERRORS.labels("fairness")

REFRESH_SECONDS = 0.2
# A field no worker writes (consumer names have no spaces).
_PRIMARY_PROBE_FIELD = "primary probe"
# A queue not empty for this long is standing: overload, not a burst.
STANDING_INTERVAL_SECONDS = 1.0
# The standing limit never goes below this: a queue must outlast a few reads (REFRESH_SECONDS)
# to keep every terminal busy, and a short deadline's tenth would not.
STANDING_FLOOR_SECONDS = 0.5
# The share of a shard's drain its workers give the shard however busy its lane is
# (app.worker.reading reads the shard first every few reads).
SHARD_TURN_SHARE = 1 / 8
# A non-empty backlog unchanged this long is read from a node nobody else uses any more.
FROZEN_SECONDS = 1.0
# A worker's drain field unchanged this long (on this process's clock) is a worker that
# stopped or froze; figures not read for this long are not figures.
DRAIN_STALE_SECONDS = 10.0
FIGURES_STALE_SECONDS = 5.0
# Retry-After when nothing says how long the backlog will take (no drain known).
COLD_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a request may go: ``deep`` shards are over its limit; ``refused`` when every
    shard it may use is; ``prompt``: to the shard's lane (its caller is within its share).
    ``expected_wait`` is the shallowest usable shard's, in seconds."""

    refused: bool
    deep: frozenset[str] = frozenset()
    expected_wait: float = 0.0
    retry_after: int = 1
    reason: str = ""
    prompt: bool = False
    # The queue an admitted request was counted on, for whom, at which urgency.
    queue: str = ""
    caller: str = ""
    urgency: int = DEFAULT_URGENCY


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    wait_share: float
    standing_share: float
    cold_backlog: int


class Admission:
    def __init__(self, reads: NodeWriter, streams: Sequence[str], drain_key: str, group: str,
                 policy: AdmissionPolicy, shares: CallerShares | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_frozen: Callable[[str], None] = lambda stream: None) -> None:
        """``on_frozen(stream)``: the backlog of ``stream`` stands still while workers drained
        it (a primary replaced but not demoted): the enqueue path drops its connections there too."""
        self._reads = reads
        self.streams = list(streams)
        self._drain_key = drain_key
        self._group = group.encode()
        self._policy = policy
        self._clock = clock
        self._on_frozen = on_frozen
        self._shares = shares or CallerShares(drain_key, clock=clock)
        # Each shard's prompt lane is a queue of its own, read before the shard.
        self._lanes = {stream: contract.prompt_lane(stream) for stream in self.streams}
        queues = [*self.streams, *self._lanes.values()]
        self._lag = dict.fromkeys(queues, 0)
        # What Redis's lag says of a queue seen drained: its read counter's shortfall.
        self._phantom = dict.fromkeys(queues, 0)
        # Whether a worker delivered from each queue between the last two reads, and what
        # it had delivered up to.
        self._draining = dict.fromkeys(queues, False)
        self._delivered: dict[str, tuple[int, int]] = {}
        # Admitted by this process since its last read of the lag.
        self._since_read = dict.fromkeys(queues, 0)
        self._read_at = dict.fromkeys(queues, clock())
        # When each shard's queue was last seen empty.
        self._empty_at = dict.fromkeys(self.streams, clock())
        self._reconnected_at = -math.inf
        # When each queue's lag last changed: a backlog workers drain never stays put.
        self._moved_at = dict.fromkeys(queues, clock())
        self._per_second = 0.0  # every live worker's drain, summed
        self._work_seconds = 0.0
        self._drain_read_at = -math.inf
        # When a live drain was last read: a backlog that stopped moving since is one workers
        # drained, then stopped draining; one that never moved with a drain known waits for a
        # first worker (scale from zero), for good reason.
        self._drain_live_at = -math.inf
        # More offered than drained, two windows running (app.proxy.fairness), at the last read.
        self._overloaded = False
        # Each worker's field as last read, and when (this process's clock) it last changed.
        self._drain_fields: dict[bytes, tuple[bytes, float]] = {}
        self._stopped = threading.Event()

    def start(self, loops: Loops) -> Admission:
        loops.start("admission", self._run)
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(REFRESH_SECONDS):
            self.refresh()

    def refresh(self) -> None:
        queues = list(self._lag)
        items = [Routed(queue, _lag_of(queue)) for queue in queues]
        items.append(Routed(self._drain_key, _drain_of(self._drain_key)))
        items += self._shares.sync_items()
        results = self._reads.execute(items)
        drain = results[len(queues)]
        # At once: whatever fails below, the counts sent are accounted for.
        try:
            self._shares.absorb(results[-2], results[-1], drain if isinstance(drain, BaseException) else drain[0])
        except Exception:  # a bad answer must not stop the lag and the drain being read
            log.exception("callers' counts not read")
        for reply in results[-2:]:
            if isinstance(reply, BaseException):
                _FAIRNESS_ERRORS.inc()
                log.debug("callers' counts not synced", extra={"error": repr(reply)})
        now = self._clock()
        for queue, result in zip(queues, results, strict=False):
            if isinstance(result, BaseException):
                # A stream not created yet (ERR no such key), or its node is down: the last
                # figure plus what was admitted since, until it is too old to be one.
                if now - self._read_at[queue] > FIGURES_STALE_SECONDS:
                    self._lag[queue] = self._since_read[queue] = 0
                    self._moved_at[queue] = now
                continue
            lag = self._lag_from(queue, *result)
            # Redis gives no lag when entries were deleted in the undelivered range (or the
            # group's read counter was reset): unknown counts as none, so admission fails
            # open rather than refuse everything; MAX_INFLIGHT_PER_PROCESS still bounds it.
            if not lag or lag != self._lag[queue]:  # empty, or not stuck
                self._moved_at[queue] = now
            self._lag[queue] = lag or 0
            self._since_read[queue] = 0
            self._read_at[queue] = now
        for stream in self.streams:
            if self._lag[stream] == 0 and self._lag[self._lanes[stream]] == 0:
                self._empty_at[stream] = now
            # Judged from this round's reads only, of a queue no worker delivered from since the
            # last one (a steady backlog workers drain moves its last-delivered id).
            frozen = any(self._lag[queue] and self._read_at[queue] == now and not self._draining[queue]
                         and now - self._moved_at[queue] >= FROZEN_SECONDS
                         and self._moved_at[queue] <= self._drain_live_at
                         for queue in (stream, self._lanes[stream]))
            if frozen and now - self._reconnected_at >= FROZEN_SECONDS:
                self._reconnected_at = now
                log.info("admission's figures stand still; reading from the primary anew", extra={"stream": stream})
                self._reads.reconnect(stream)
                self._on_frozen(stream)
        if not isinstance(drain, BaseException):
            self._read_drain(drain[-1])
        elif now - self._drain_read_at > DRAIN_STALE_SECONDS:
            self._per_second, self._work_seconds = 0.0, 0.0
        self._overloaded = self._shares.overloaded(self._per_second)
        metrics.DRAIN_PER_SECOND.set(self._per_second)
        metrics.EXPECTED_WAIT_SECONDS.set(min(self._wait_of(stream, False) for stream in self.streams))

    def _lag_from(self, queue: str, groups: Any, length: Any, newest: Any) -> int | None:
        info = next((item for item in groups if item.get("name") == self._group), None) \
            if isinstance(groups, list) else None
        if info is None:
            self._draining[queue] = False
            return int(length or 0)  # no worker has ever read it: every entry waits
        delivered = _entry_id(info.get("last-delivered-id"))
        # At a process's first read, a group that has delivered anything counts as drained by
        # someone: one read later, only one that delivered since does.
        self._draining[queue] = delivered != self._delivered.get(queue, (0, 0))
        self._delivered[queue] = delivered
        reported = info.get("lag")
        if not newest or _entry_id(newest[0][0]) <= _entry_id(info.get("last-delivered-id")):
            # The newest entry is delivered: nothing waits, whatever the lag says; what it
            # says is its read counter's shortfall (seen after failovers: lag 113 on a drained
            # stream), taken off until the queue is next seen drained.
            self._phantom[queue] = int(reported or 0)
            return 0
        if reported is None:
            return None
        return max(1, min(int(reported) - self._phantom[queue], int(length or 0)))

    def _read_drain(self, fields: Any) -> None:
        now = self._clock()
        known, self._drain_fields = self._drain_fields, {}
        live = []
        for name, raw in (fields or {}).items():
            before = known.get(name)
            changed_at = before[1] if before is not None and before[0] == raw else now
            self._drain_fields[name] = (raw, changed_at)
            drain = contract.Drain.decode(raw)
            if drain is not None and now - changed_at <= DRAIN_STALE_SECONDS and drain.per_second > 0:
                live.append(drain)
        self._per_second = sum(drain.per_second for drain in live)
        if live:
            self._drain_live_at = now
        # The work of an average entry, weighted by how many each worker does.
        self._work_seconds = (sum(d.work_seconds * d.per_second for d in live) / self._per_second) if live else 0.0
        self._drain_read_at = now

    def admit(self, deadline_seconds: float, urgency: int = DEFAULT_URGENCY, *, patient: bool = False,
              only: str | None = None, caller: str = "") -> Verdict:
        """``judge``, and an admitted request counted on its queue at once: requests judged
        together (greenlets of one process) must see each other, not only what Redis showed."""
        self._shares.offered(caller, urgency, synchronous=not patient)
        verdict = self.judge(deadline_seconds, urgency, patient=patient, only=only, caller=caller)
        if verdict.refused:
            return verdict
        usable = [s for s in ([only] if only is not None else self.streams) if s not in verdict.deep]
        stream = min(usable, key=lambda s: self._wait_of(s, verdict.prompt))
        queue = self._lanes[stream] if verdict.prompt else stream
        self._since_read[queue] += 1
        if verdict.prompt:
            self._shares.prompted(caller, urgency)
        return dataclasses.replace(verdict, queue=queue, caller=caller, urgency=urgency)

    def withdraw(self, verdict: Verdict, count: int = -1) -> None:
        """An admitted request that queued nothing (an Idempotency-Key found there already),
        given back at once; ``count=1`` counts it again (it queues after all)."""
        if verdict.queue:
            self._since_read[verdict.queue] = max(0, self._since_read[verdict.queue] + count)
        if verdict.prompt:
            self._shares.prompted(verdict.caller, verdict.urgency, count)

    def _wait_of(self, stream: str, prompt: bool) -> float:
        """Seconds a new entry waits: the lane's backlog at the shard's share of the drain,
        and unless prompt the shard's backlog at what the lanes leave of it."""
        if self._per_second <= 0:
            return 0.0
        per_shard = self._per_second / len(self.streams)
        lane = self._lanes[stream]
        wait = (self._lag[lane] + self._since_read[lane]) / per_shard
        if prompt:
            return wait
        left = max(SHARD_TURN_SHARE, 1 - self._shares.prompt_per_second() / self._per_second)
        return wait + (self._lag[stream] + self._since_read[stream]) / (per_shard * left)

    def _cold_backlog(self, stream: str) -> int:
        """Entries waiting for a first worker: as Redis showed them, and what this process
        admitted since, unless the queue was read empty while a worker delivered from it (a
        worker that has not published yet: what was admitted since is likely served)."""
        return sum(self._lag[queue] + (0 if self._draining[queue] and not self._lag[queue]
                                       else self._since_read[queue])
                   for queue in (stream, self._lanes[stream]))

    def judge(self, deadline_seconds: float, urgency: int = DEFAULT_URGENCY, *, patient: bool = False,
              only: str | None = None, caller: str = "") -> Verdict:
        """Whether a request with this deadline may be queued now, where, and where not.
        ``patient``: an async request (to the shard, not held to the standing limit).
        ``only``: the one shard it may go to (Idempotency-Key)."""
        candidates = [only] if only is not None else self.streams
        lane_queued = any(self._lag[self._lanes[s]] + self._since_read[self._lanes[s]] for s in candidates)
        prompt = not patient and self._shares.within_share(caller, urgency, self._per_second, lane_queued)
        if self._per_second <= 0:
            # Whatever its queue, what waits for a first worker is both queues' entries.
            deep = frozenset(s for s in candidates if self._cold_backlog(s) >= self._policy.cold_backlog)
            if len(deep) < len(candidates):
                return Verdict(refused=False, deep=deep, prompt=prompt)
            return Verdict(refused=True, deep=deep, retry_after=COLD_RETRY_AFTER_SECONDS, reason="cold",
                           prompt=prompt)
        now = self._clock()
        limit = self._policy.wait_share * max(0.0, deadline_seconds - self._work_seconds)
        held_short = not (prompt or patient) and urgency >= DEFAULT_URGENCY and self._overloaded
        if not prompt and urgency > DEFAULT_URGENCY:
            limit *= (8 - urgency) / (8 - DEFAULT_URGENCY)
        standing_limit = min(limit, max(STANDING_FLOOR_SECONDS, self._policy.standing_share * deadline_seconds))
        deep_set = set()
        best_wait, best_excess = math.inf, math.inf
        for stream in candidates:
            standing = held_short and now - self._empty_at[stream] > STANDING_INTERVAL_SECONDS
            wait = self._wait_of(stream, prompt)
            # An empty queue admits whatever the work takes: nothing waits ahead of it.
            excess = wait - (standing_limit if standing else limit) if wait > 0 else 0.0
            if excess > 0:
                deep_set.add(stream)
                best_excess = min(best_excess, excess)
            else:
                best_wait = min(best_wait, wait)
        deep = frozenset(deep_set)
        if len(deep) < len(candidates):
            return Verdict(refused=False, deep=deep, expected_wait=best_wait, prompt=prompt)
        wait = min(self._wait_of(stream, prompt) for stream in candidates)
        return Verdict(refused=True, deep=deep, expected_wait=wait, retry_after=max(1, math.ceil(best_excess)),
                       reason=self._refusal_reason(caller, prompt or patient), prompt=prompt)

    def _refusal_reason(self, caller: str, in_lane_or_async: bool) -> str:
        """Share when the caller was off the lane because others have their shares, else wait."""
        return "share" if not in_lane_or_async and self._shares.sharing(caller, self._per_second) else "wait"


class AdmitEverything:
    """ADMISSION_ENABLED=false: only MAX_INFLIGHT_PER_PROCESS limits what is queued; the
    lane takes urgent synchronous requests, as their Priority asks."""

    def judge(self, deadline_seconds: float, urgency: int = DEFAULT_URGENCY, *, patient: bool = False,
              only: str | None = None, caller: str = "") -> Verdict:
        return Verdict(refused=False, prompt=is_urgent(urgency) and not patient)

    admit = judge

    def withdraw(self, verdict: Verdict, count: int = -1) -> None:
        pass


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
        pipe.time()  # Redis's clock, always of this node, names the callers' windows (app.proxy.fairness)
        pipe.hdel(key, _PRIMARY_PROBE_FIELD)
        pipe.hgetall(key)
    return add
