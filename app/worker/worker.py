"""The worker loop: one reader per request stream shard feeding N shared terminals.

A reader asks Redis only for as many entries as there are idle terminals, so an
entry never waits in this process while a terminal of another worker is free, and
one XREADGROUP serves several terminals at once under load. With several shards
each shard has its reader, and the terminals are shared: a reader takes every idle
terminal for a read that does not block, and blocks holding one terminal only, so a
shard with work is never starved by readers waiting on empty shards.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from app.shared import contract
from app.shared.batching import Batcher
from app.shared.connections import RedisClient
from app.shared.logs import request_id_var
from app.shared.replication import ReplicaWait
from app.shared.resilience import CircuitOpen, LoopBackoff, RedisGuard, is_outage
from app.shared.tracing import consumer_span
from app.worker import metrics
from app.worker.consumers import ConsumerJanitor
from app.worker.forecast import build_forecast
from app.worker.replies import Outcome, OutcomeWriter
from app.worker.settings import WorkerSettings

log = logging.getLogger("app.worker")

# (request stream, entry id, fields, how many times it has been delivered)
Entry = tuple[str, bytes, dict[bytes, bytes], int]

HOUSEKEEPING_INTERVAL_SECONDS = 5.0


def _id_key(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence or 0)


@dataclass
class Shard:
    """One request stream of the group, and its reader's state."""

    stream: str
    backoff: LoopBackoff
    group_ready: bool = False
    claim_cursor: bytes = b"0-0"
    next_claim: float = 0.0
    last_loop: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(self, settings: WorkerSettings, client: RedisClient, guard: RedisGuard,
                 replica_wait: ReplicaWait) -> None:
        self.settings = settings
        self._redis = client
        self.guard = guard
        self._writer = OutcomeWriter(client, settings.consumer_group, settings.dead_letter_maxlen, replica_wait)
        # Terminals that finish together share one pipeline of replies and one XACK per shard.
        self._outcomes: Batcher[Outcome] = Batcher(self._write_outcomes, "outcomes")
        self._janitor = ConsumerJanitor(client, settings.consumer_group, settings.consumer_name)
        self.shards = [Shard(stream, LoopBackoff(0.05, settings.redis_reconnect_max_seconds))
                       for stream in settings.request_streams]
        # Look for orphans often enough that a dead consumer's entries wait little past the idle time.
        self._claim_interval = min(5.0, max(0.2, settings.claim_idle_seconds / 4))
        self._stopping = threading.Event()
        self._idle_terminals = threading.Semaphore(settings.worker_terminals)
        self._work: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._terminals: list[threading.Thread] = []
        self.group_ready = threading.Event()
        self.processed = 0
        self._processed_lock = threading.Lock()
        # Entries this worker holds right now. A stalled worker (GC pause, CPU starvation)
        # sees its own entries turn idle; claiming them must not start them a second time.
        self._in_hand: set[tuple[str, bytes]] = set()
        self._in_hand_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def last_loop_monotonic(self) -> float:
        """When the slowest reader last went round its loop (a wedged one shows here)."""
        return min(shard.last_loop for shard in self.shards)

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested: no new entries will be read")
            self._stopping.set()

    def run(self) -> None:
        settings = self.settings
        metrics.TERMINALS_CONFIGURED.set(settings.worker_terminals)
        for number in range(settings.worker_terminals):
            thread = threading.Thread(
                target=self._terminal, args=(random.Random(),), name=f"terminal-{number}", daemon=True
            )
            thread.start()
            self._terminals.append(thread)
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        log.info(
            "worker started",
            extra={"consumer": settings.consumer_name, "group": settings.consumer_group,
                   "streams": [shard.stream for shard in self.shards], "terminals": settings.worker_terminals},
        )
        readers = [threading.Thread(target=self._read_loop, args=(shard,), name=f"reader-{shard.stream}", daemon=True)
                   for shard in self.shards[1:]]
        for reader in readers:
            reader.start()
        self._read_loop(self.shards[0])
        for reader in readers:
            reader.join(timeout=settings.read_block_ms / 1000 + 5)
        self._drain()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        for _ in self._terminals:
            self._work.put(None)
        for thread in self._terminals:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        unfinished = sum(thread.is_alive() for thread in self._terminals)
        # Entries still in work stay pending in the group, where another worker claims them.
        log.info(
            "worker stopped",
            extra={"processed": self.processed, "unfinished_terminals": unfinished},
        )

    # -- reading -------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Creates the consumer group of every shard that has none yet."""
        for shard in self.shards:
            if not shard.group_ready:
                self._ensure_group(shard)

    def _ensure_group(self, shard: Shard) -> None:
        try:
            # Id 0, not $: requests queued before any worker ever started are work too.
            self._redis.xgroup_create(shard.stream, self.settings.consumer_group, id="0", mkstream=True)
            log.info("consumer group created", extra={"group": self.settings.consumer_group, "stream": shard.stream})
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        shard.group_ready = True
        if all(other.group_ready for other in self.shards):
            self.group_ready.set()

    def _read_loop(self, shard: Shard) -> None:
        terminals = self.settings.worker_terminals
        shared = len(self.shards) > 1
        while not self._stopping.is_set():
            shard.last_loop = time.monotonic()
            if not self._idle_terminals.acquire(timeout=0.5):
                # Every terminal may be waiting on an open breaker to write a reply:
                # someone has to notice that Redis is back.
                self.guard.probe()
                continue
            permits = 1
            while permits < terminals and self._idle_terminals.acquire(blocking=False):
                permits += 1
            entries: list[Entry] = []
            try:
                if shared and permits > 1:
                    entries = self.guard.call_from_loop(self._next_entries, shard, permits, False)
                    if not entries:
                        # Wait for this shard holding one terminal: the others may be
                        # wanted by a shard that has work meanwhile.
                        self._release(permits - 1)
                        permits = 1
                if not entries:
                    entries = self.guard.call_from_loop(self._next_entries, shard, permits, True)
                shard.backoff.reset()
            except redis.RedisError as error:
                self._on_read_error(shard, error)
            for entry in entries:
                with self._in_hand_lock:
                    self._in_hand.add((entry[0], entry[1]))
                self._work.put(entry)
            self._release(permits - len(entries))

    def _release(self, permits: int) -> None:
        for _ in range(permits):
            self._idle_terminals.release()

    def _next_entries(self, shard: Shard, count: int, block: bool) -> list[Entry]:
        if not shard.group_ready:
            self._ensure_group(shard)
        if time.monotonic() >= shard.next_claim:
            claimed = self._claim_orphans(shard, count)
            if claimed:
                return claimed
        settings = self.settings
        response: Any = self._redis.xreadgroup(
            settings.consumer_group, settings.consumer_name, {shard.stream: ">"},
            count=count, block=settings.read_block_ms if block else None,
        )
        if not response:
            return []
        return [(shard.stream, entry_id, fields, 1) for entry_id, fields in response[0][1] if fields is not None]

    def _claim_orphans(self, shard: Shard, count: int) -> list[Entry]:
        """Take over entries another consumer left pending past CLAIM_IDLE_SECONDS."""
        settings = self.settings
        response: Any = self._redis.xautoclaim(
            shard.stream, settings.consumer_group, settings.consumer_name,
            min_idle_time=int(settings.claim_idle_seconds * 1000), start_id=shard.claim_cursor, count=count,
        )
        shard.claim_cursor = response[0]
        if shard.claim_cursor == b"0-0":
            # A full pass over the pending list is done; the next one waits an interval.
            shard.next_claim = time.monotonic() + self._claim_interval
        with self._in_hand_lock:
            claimed = [(entry_id, fields) for entry_id, fields in response[1]
                       if fields is not None and (shard.stream, entry_id) not in self._in_hand]
        if not claimed:
            return []
        ids = sorted((entry_id for entry_id, _ in claimed), key=_id_key)
        details = self._redis.xpending_range(
            shard.stream, settings.consumer_group, min=ids[0], max=ids[-1],
            count=len(ids) + settings.worker_terminals + 16, consumername=settings.consumer_name,
        )
        deliveries = {item["message_id"]: int(item["times_delivered"]) for item in details}
        metrics.CLAIMED.inc(len(claimed))
        log.info("claimed orphaned entries", extra={"count": len(claimed), "stream": shard.stream})
        return [(shard.stream, entry_id, fields, deliveries.get(entry_id, 2)) for entry_id, fields in claimed]

    def _on_read_error(self, shard: Shard, error: redis.RedisError) -> None:
        if isinstance(error, redis.ResponseError) and "NOGROUP" in str(error):
            # Redis lost the stream or the group (restart without persistence): recreate.
            log.warning("consumer group missing, recreating it", extra={"stream": shard.stream})
            shard.group_ready = False
            self.group_ready.clear()
            self._writer.ttl.forget_all()  # the reply streams went with it
            return
        delay = shard.backoff.next_delay()
        log.warning("reading the request stream failed",
                    extra={"stream": shard.stream, "error": repr(error), "retry_in_seconds": round(delay, 3)})
        self._stopping.wait(delay)

    # -- processing ----------------------------------------------------------------

    def _terminal(self, rng: random.Random) -> None:
        while True:
            entry = self._work.get()
            if entry is None:
                return
            metrics.TERMINALS_ACTIVE.inc()
            try:
                self._handle(*entry, rng=rng)
            except Exception:  # a terminal must survive any single entry
                log.exception("unexpected error handling an entry", extra={"entry_id": entry[1].decode()})
            finally:
                with self._in_hand_lock:
                    self._in_hand.discard((entry[0], entry[1]))
                metrics.TERMINALS_ACTIVE.dec()
                self._idle_terminals.release()

    def _count(self, outcome: str) -> None:
        metrics.PROCESSED_BY_OUTCOME[outcome].inc()
        with self._processed_lock:
            self.processed += 1

    def _handle(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int,
                rng: random.Random) -> None:
        started = time.perf_counter()
        try:
            request = contract.WeatherRequest.from_fields(fields)
        except contract.PoisonEntry as poison:
            self._dead_letter(stream, entry_id, fields, f"poison: {poison}", deliveries, "poison")
            return
        if deliveries > self.settings.max_deliveries:
            self._dead_letter(stream, entry_id, fields, f"delivered {deliveries} times (MAX_DELIVERIES is "
                              f"{self.settings.max_deliveries})", deliveries, "max_deliveries")
            return
        token = request_id_var.set(request.request_id)
        try:
            with consumer_span("process weather request", request.traceparent) as span:
                span.set_attribute("messaging.message.id", entry_id.decode())
                span.set_attribute("messaging.message.delivery_count", deliveries)
                self._process(Outcome(stream, entry_id), request, rng)
        except redis.RedisError as error:
            # Not acknowledged: the entry stays pending and is delivered again later.
            log.warning("could not reply or acknowledge; entry stays pending",
                        extra={"entry_id": entry_id.decode(), "error": repr(error)})
        finally:
            request_id_var.reset(token)
            metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)

    def _process(self, taken: Outcome, request: contract.WeatherRequest, rng: random.Random) -> None:
        """``taken`` names the entry; as it is, it acknowledges without a reply."""
        if request.expired():
            # The proxy has already answered 504; doing the work now helps nobody.
            self._outcomes.submit(taken)
            self._count("expired")
            log.info("skipped expired request",
                     extra={"entry_id": taken.entry_id.decode(), "subject": request.subject})
            return
        delay = self.settings.processing_delay_ms
        if delay.high_ms:
            time.sleep(rng.uniform(delay.low_ms, delay.high_ms) / 1000)
        try:
            reply = request.reply(contract.STATUS_OK,
                                  build_forecast(request.city, request.location, request.request_id, rng))
            outcome = "ok"
        except Exception as error:  # a bug in the work still owes the caller an answer
            log.exception("processing failed")
            reply = request.reply(contract.STATUS_ERROR, {"error": "processing_failed", "detail": type(error).__name__})
            outcome = "error"
        self._until_deadline(request, Outcome(taken.stream, taken.entry_id, request.reply_to, reply))
        self._count(outcome)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("replied", extra={"entry_id": taken.entry_id.decode(), "outcome": outcome,
                                        "subject": request.subject})

    def _write_outcomes(self, batch: list[Outcome]) -> list[BaseException | None]:
        # One try per batch inside the breaker; the terminals pace their own retries.
        return self.guard.call_once(self._writer.write, batch)

    def _until_deadline(self, request: contract.WeatherRequest, outcome: Outcome) -> None:
        """Retries a reply across an outage or a failover while its caller still waits.

        The entry stays pending meanwhile, so giving up loses nothing: it is delivered
        again later. Retrying here is what lets a reply reach a new primary in time."""
        pacing: LoopBackoff | None = None  # only a failed write needs one
        while True:
            try:
                self._outcomes.submit(outcome)
                return
            except redis.RedisError as error:
                if not (is_outage(error) or isinstance(error, CircuitOpen)) or request.expired():
                    raise
                pacing = pacing or LoopBackoff(0.05, self.settings.redis_reconnect_max_seconds)
                delay = pacing.next_delay()
                log.info("reply not written yet; retrying", extra={"error": repr(error), "retry_in_seconds": delay})
                time.sleep(delay)

    def _dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str, deliveries: int, category: str
    ) -> None:
        try:
            self.guard.call(self._writer.dead_letter_and_ack, stream, entry_id, fields, reason, deliveries,
                            self.settings.consumer_name)
        except redis.RedisError as error:
            log.warning("could not dead-letter; entry stays pending",
                        extra={"entry_id": entry_id.decode(), "error": repr(error)})
            return
        self._count("dead_lettered")
        metrics.DEAD_LETTERED.labels(category).inc()
        log.warning("entry dead-lettered",
                    extra={"stream": stream, "entry_id": entry_id.decode(), "reason": reason, "deliveries": deliveries})

    # -- housekeeping --------------------------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL_SECONDS if self.group_ready.is_set() else 0.5):
            try:
                self.guard.call_from_loop(self.refresh_queue_metrics)
                removed = self.guard.call_from_loop(self._remove_gone_consumers)
            except redis.RedisError as error:
                metrics.REDIS_UP.set(0)
                log.debug("housekeeping skipped", extra={"error": repr(error)})
                continue
            metrics.REDIS_UP.set(1)
            if removed:
                metrics.CONSUMERS_REMOVED.inc(len(removed))
                log.info("removed gone consumers", extra={"consumers": removed})

    def _remove_gone_consumers(self) -> list[str]:
        idle_ms = int(self.settings.consumer_expiry_seconds * 1000)
        return [name for shard in self.shards for name in self._janitor.remove_gone(shard.stream, idle_ms)]

    def refresh_queue_metrics(self) -> None:
        """Lag, pending and lengths of every shard, and their sums (what alerts and scaling read)."""
        group = self.settings.consumer_group.encode()
        with self._redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                pipe.xinfo_groups(shard.stream)
                pipe.xlen(shard.stream)
                pipe.xlen(contract.dead_letter_stream(shard.stream))
            results = pipe.execute(raise_on_error=False)
        lag_total = pending_total = length_total = dead_total = 0
        for index, shard in enumerate(self.shards):
            groups, stream_length, dead_letters = results[3 * index:3 * index + 3]
            length = stream_length if isinstance(stream_length, int) else 0
            info = next((item for item in groups if item.get("name") == group), None) \
                if isinstance(groups, list) else None
            if info is not None:
                pending = int(info.get("pending") or 0)
                # Redis reports no lag once entries were deleted in the undelivered
                # range; the stream length is then the safe upper bound.
                lag = int(info["lag"]) if info.get("lag") is not None else length
                metrics.SHARD_LAG.labels(shard.stream).set(lag)
                metrics.SHARD_PENDING.labels(shard.stream).set(pending)
                lag_total += lag
                pending_total += pending
            length_total += length
            dead_total += dead_letters if isinstance(dead_letters, int) else 0
        metrics.GROUP_PENDING.set(pending_total)
        metrics.GROUP_LAG.set(lag_total)
        metrics.QUEUE_DEPTH.set(lag_total + pending_total)
        metrics.REQUEST_STREAM_LENGTH.set(length_total)
        metrics.DEAD_LETTER_LENGTH.set(dead_total)
