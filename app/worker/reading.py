"""Reading one request stream shard: XREADGROUP for as many entries as there are idle
terminals, taking over orphans of dead consumers, recreating a group Redis lost.

A shard has a prompt lane (contract.prompt_lane): the requests of callers within their
share of the workers (app.proxy.fairness), read before the shard, which holds what callers
send beyond their share and async work. While the shard has a backlog (an entry read from
it in the last SHARD_ACTIVE_SECONDS was there before its read began) a read takes the lane's entries first and fills
the rest from the shard, so a prompt entry waits only behind prompt ones; every
SHARD_TURN_EVERY-th such read takes the shard's first, so a busy lane never starves it
(admission counts on that share: app.proxy.admission SHARD_TURN_SHARE), and so does every
other read while the shard's synchronous entries come out having waited SHARD_OVERDUE_SHARE
of their time (what admission let in there is answered in time). Otherwise one
XREADGROUP reads both (no extra round trip). Redis may then return up to COUNT of each: the
shard's entries beyond the terminals taken wait here for a terminal (rare: both must have
entries at that moment) instead of being read again.

A reader asks Redis only for as many entries as there are idle terminals, so an entry
never waits in this process while a terminal of another worker is free, and one
XREADGROUP serves several terminals at once under load. With several shards the
terminals are shared: a reader takes every idle terminal for a read that does not
block, and blocks holding one terminal only, so a shard with work is never starved by
readers waiting on empty shards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.resilience import LoopBackoff, RedisGuard
from app.worker import metrics
from app.worker.delivery import Delivery
from app.worker.terminals import Terminals

log = logging.getLogger("app.worker")


def _id_key(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence or 0)


# After an entry of the shard, the lane is read on its own first for this long.
SHARD_ACTIVE_SECONDS = 2.0
# Of the reads that take the lane first, every this many takes the shard first.
SHARD_TURN_EVERY = 8
# A synchronous entry of the shard read after waiting this share of the time its deadline
# gave it (and not late yet: the late are skipped at no cost): every other read takes the
# shard first until its entries are younger, so what admission let into the shard is served
# in time however busy the lane stays (a lone caller's requests moved back from the shard to
# the lane when an overload ended waited behind the lane until they timed out), and the lane
# still has half the reads.
SHARD_OVERDUE_SHARE = 0.5
# Clocks of Redis and this host further apart than this: the arrival test is not trusted.
_CLOCK_TOLERANCE_MS = 50


def _arrived_while_blocked(entry_id: bytes, blocked_at_ms: float) -> bool:
    """Whether an entry a blocking read returned was added while the read waited (then
    the shard was empty before it), judged from its id's time on Redis's clock. With
    clocks that disagree the answer is "no", which costs only a read that finds nothing."""
    added_ms = _id_key(entry_id)[0]
    return blocked_at_ms <= added_ms <= time.time() * 1000 + _CLOCK_TOLERANCE_MS


class ShardReader:
    def __init__(self, client: RedisClient, guard: RedisGuard, terminals: Terminals, stream: str, *,
                 group: str, consumer: str, read_block_ms: int, claim_idle_seconds: float,
                 reconnect_max_seconds: float, shares_terminals: bool, stopping: threading.Event,
                 on_group_lost: Callable[[], None]) -> None:
        self.stream = stream
        self.lane = contract.prompt_lane(stream)
        self._redis = client
        self._guard = guard
        self._terminals = terminals
        self._group = group
        self._consumer = consumer
        self._read_block_ms = read_block_ms
        self._claim_idle_ms = int(claim_idle_seconds * 1000)
        # Look for orphans often enough that a dead consumer's entries wait little past the idle time.
        self._claim_interval = min(5.0, max(0.2, claim_idle_seconds / 4))
        # Set by the worker whenever it starts or retires another reader.
        self.shares_terminals = shares_terminals
        self._stopping = stopping
        # This shard's set was retired (app.worker.shard_sets): read no more.
        self.retired = threading.Event()
        self._maybe_more = True
        self._on_group_lost = on_group_lost
        self._backoff = LoopBackoff(0.05, reconnect_max_seconds)
        self.group_ready = False
        self._claim_cursors = {self.lane: b"0-0", stream: b"0-0"}
        self._shard_active_until = 0.0
        self._lane_first_reads = 0
        self._shard_overdue = False
        self._next_claim = 0.0
        self.last_loop = time.monotonic()

    @property
    def streams(self) -> tuple[str, str]:
        """What this reader reads: the prompt lane, then the shard."""
        return self.lane, self.stream

    def ensure_group(self) -> None:
        """Creates the consumer group of this shard and of its lane unless they exist."""
        for stream in self.streams:
            try:
                # Id 0, not $: requests queued before any worker ever started are work too.
                self._redis.xgroup_create(stream, self._group, id="0", mkstream=True)
                log.info("consumer group created", extra={"group": self._group, "stream": stream})
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
        self.group_ready = True

    def run(self) -> None:
        """Reads until the worker stops or the shard is retired, handing what it reads to
        the terminals it took."""
        terminals = self._terminals
        while not self._stopping.is_set() and not self.retired.is_set():
            self.last_loop = time.monotonic()
            if not terminals.take_one(timeout=0.5):
                # Every terminal may be waiting on an open breaker to write a reply:
                # someone has to notice that Redis is back.
                self._guard.probe()
                continue
            # Sharing terminals, a read wider than one terminal is only worth it when the
            # shard may hold more: else it finds the shard empty, an extra round trip per
            # entry (two XREADGROUPs per entry at a few hundred entries a second).
            wide = not self.shares_terminals or self._maybe_more
            taken = 1 + (terminals.take_idle(terminals.count - 1) if wide else 0)
            deliveries: list[Delivery] = []
            try:
                if self.shares_terminals and taken > 1:
                    deliveries = self._guard.call_from_loop(self.next_deliveries, taken, False)
                    if not deliveries:
                        # Wait for this shard holding one terminal: the others may be
                        # wanted by a shard that has work meanwhile.
                        terminals.give_back(taken - 1)
                        taken = 1
                if not deliveries:
                    blocked_at_ms = time.time() * 1000
                    deliveries = self._guard.call_from_loop(self.next_deliveries, taken, True)
                    self._maybe_more = len(deliveries) >= taken and not (
                        taken == 1 and _arrived_while_blocked(deliveries[0].entry_id, blocked_at_ms))
                else:
                    self._maybe_more = len(deliveries) >= taken
                self._backoff.reset()
            except redis.RedisError as error:
                self._on_error(error)
            except BaseException:
                # What nobody expected (the supervisor runs this loop again): the terminals
                # still taken go back, else they would stay taken for good, unseen by any probe.
                terminals.give_back(taken)
                raise
            terminals.hand_over(deliveries[:taken])
            terminals.give_back(taken - len(deliveries))
            self._hand_over_the_rest(deliveries[taken:])

    def _hand_over_the_rest(self, deliveries: list[Delivery]) -> None:
        """Entries beyond the terminals taken (a read of the lane and the shard together)
        are held at once, leased like those in work, and each waits for a terminal; a
        stopping worker lets them go, pending for another."""
        self._terminals.hold(deliveries)
        for index, delivery in enumerate(deliveries):
            while not self._terminals.take_one(timeout=0.5):
                self.last_loop = time.monotonic()  # waiting for a terminal is no stall
                if self._stopping.is_set():
                    self._terminals.let_go(deliveries[index:])
                    return
            self._terminals.hand_over([delivery])

    def next_deliveries(self, count: int, block: bool) -> list[Delivery]:
        if not self.group_ready:
            self.ensure_group()
        if time.monotonic() >= self._next_claim:
            claimed = self.claim_orphans(count)
            if claimed:
                return claimed
        first: list[Delivery] = []
        rest: tuple[str, ...] = self.streams
        if time.monotonic() < self._shard_active_until:
            self._lane_first_reads += 1
            every = 2 if self._shard_overdue else SHARD_TURN_EVERY
            shard_turn = self._lane_first_reads % every == 0
            rest = (self.lane,) if shard_turn else (self.stream,)
            first = self._read((self.stream if shard_turn else self.lane,), count, block=False)
            if len(first) >= count:
                return self._noted(first, time.time() * 1000)
            if not first:
                # A shard found empty is overdue no more.
                self._shard_overdue = self._shard_overdue and not shard_turn
                rest = self.streams
        read_at_ms = time.time() * 1000
        try:
            deliveries = first + self._read(rest, count - len(first), block and not first)
        except redis.RedisError:
            if not first:
                raise
            # Those read are this consumer's now: handed over, not left for a claim much later.
            deliveries = first
        return self._noted(deliveries, read_at_ms)

    def _noted(self, deliveries: list[Delivery], read_at_ms: float) -> list[Delivery]:
        """An entry of the shard that was there before the read began is a backlog the lane
        must not queue behind; one that arrived while a read waited is not. The shard's
        entries also say whether it is overdue (its next read comes first)."""
        from_shard = [delivery for delivery in deliveries if delivery.stream == self.stream]
        if any(not _arrived_while_blocked(delivery.entry_id, read_at_ms) for delivery in from_shard):
            self._shard_active_until = time.monotonic() + SHARD_ACTIVE_SECONDS
        if from_shard:
            now_ms = time.time() * 1000
            self._shard_overdue = any(SHARD_OVERDUE_SHARE <= contract.waited_share(
                delivery.entry_id, delivery.fields, now_ms) < 1 for delivery in from_shard)
        return deliveries

    def _read(self, streams: tuple[str, ...], count: int, block: bool) -> list[Delivery]:
        response: Any = self._redis.xreadgroup(
            self._group, self._consumer, dict.fromkeys(streams, ">"), count=count,
            block=self._read_block_ms if block else None,
        )
        if not response:
            return []
        by_stream = {(name.decode() if isinstance(name, bytes) else name): entries for name, entries in response}
        return [Delivery(stream, entry_id, fields, 1) for stream in streams
                for entry_id, fields in by_stream.get(stream, ()) if fields is not None]

    def claim_orphans(self, count: int) -> list[Delivery]:
        """Take over entries another consumer left pending past CLAIM_IDLE_SECONDS: the
        lane's first, then the shard's."""
        claimed: list[Delivery] = []
        passes_done = 0
        for stream in self.streams:
            if len(claimed) >= count:
                break
            found = self._claim_from(stream, count - len(claimed))
            passes_done += self._claim_cursors[stream] == b"0-0"
            claimed += found
        if passes_done == len(self.streams):
            # A full pass over both pending lists is done; the next one waits an interval.
            self._next_claim = time.monotonic() + self._claim_interval
        return claimed

    def _claim_from(self, stream: str, count: int) -> list[Delivery]:
        response: Any = self._redis.xautoclaim(
            stream, self._group, self._consumer, min_idle_time=self._claim_idle_ms,
            start_id=self._claim_cursors[stream], count=count,
        )
        self._claim_cursors[stream] = response[0]
        claimed = [(entry_id, fields) for entry_id, fields in response[1]
                   if fields is not None and not self._terminals.holds(stream, entry_id)]
        if not claimed:
            return []
        ids = sorted((entry_id for entry_id, _ in claimed), key=_id_key)
        details = self._redis.xpending_range(
            stream, self._group, min=ids[0], max=ids[-1],
            count=len(ids) + self._terminals.count + 16, consumername=self._consumer,
        )
        deliveries = {item["message_id"]: int(item["times_delivered"]) for item in details}
        metrics.CLAIMED.inc(len(claimed))
        log.info("claimed orphaned entries", extra={"count": len(claimed), "stream": stream})
        return [Delivery(stream, entry_id, fields, deliveries.get(entry_id, 2)) for entry_id, fields in claimed]

    def _on_error(self, error: redis.RedisError) -> None:
        if isinstance(error, redis.ResponseError) and "NOGROUP" in str(error):
            # Redis lost the stream or the group (restart without persistence): recreate.
            log.warning("consumer group missing, recreating it", extra={"stream": self.stream})
            self.group_ready = False
            self._on_group_lost()
            return
        delay = self._backoff.next_delay()
        log.warning("reading the request stream failed",
                    extra={"stream": self.stream, "error": repr(error), "retry_in_seconds": round(delay, 3)})
        self._stopping.wait(delay)
