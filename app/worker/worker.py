"""The worker loop: one reader feeding N terminals from a consumer group.

The reader asks Redis only for as many entries as there are idle terminals, so an
entry never waits in this process while a terminal of another worker is free, and
one XREADGROUP serves several terminals at once under load.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any

import redis

from app.shared import contract
from app.shared.batching import Batcher
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

# (entry id, fields, how many times it has been delivered)
Entry = tuple[bytes, dict[bytes, bytes], int]

HOUSEKEEPING_INTERVAL_SECONDS = 5.0


def _id_key(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence or 0)


class Worker:
    def __init__(self, settings: WorkerSettings, client: redis.Redis, guard: RedisGuard) -> None:
        self.settings = settings
        self._redis = client
        self.guard = guard
        self._writer = OutcomeWriter(
            client, settings.request_stream, settings.consumer_group, settings.dead_letter_maxlen,
            ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
        )
        # Terminals that finish together share one pipeline of replies and one XACK.
        self._outcomes: Batcher[Outcome] = Batcher(self._write_outcomes, "outcomes")
        self._janitor = ConsumerJanitor(
            client, settings.request_stream, settings.consumer_group, settings.consumer_name
        )
        self._loop_backoff = LoopBackoff(0.05, settings.redis_reconnect_max_seconds)
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        # Look for orphans often enough that a dead consumer's entries wait little past the idle time.
        self._claim_interval = min(5.0, max(0.2, settings.claim_idle_seconds / 4))
        self._stopping = threading.Event()
        self._idle_terminals = threading.Semaphore(settings.worker_terminals)
        self._work: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._terminals: list[threading.Thread] = []
        self.group_ready = threading.Event()
        self.last_loop_monotonic = time.monotonic()
        self.processed = 0
        self._processed_lock = threading.Lock()
        # Entries this worker holds right now. A stalled worker (GC pause, CPU starvation)
        # sees its own entries turn idle; claiming them must not start them a second time.
        self._in_hand: set[bytes] = set()
        self._in_hand_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

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
                   "stream": settings.request_stream, "terminals": settings.worker_terminals},
        )
        self._read_loop()
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
        try:
            # Id 0, not $: requests queued before any worker ever started are work too.
            self._redis.xgroup_create(
                self.settings.request_stream, self.settings.consumer_group, id="0", mkstream=True
            )
            log.info("consumer group created", extra={"group": self.settings.consumer_group})
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self.group_ready.set()

    def _read_loop(self) -> None:
        terminals = self.settings.worker_terminals
        while not self._stopping.is_set():
            self.last_loop_monotonic = time.monotonic()
            if not self._idle_terminals.acquire(timeout=0.5):
                # Every terminal may be waiting on an open breaker to write a reply:
                # someone has to notice that Redis is back.
                self.guard.probe()
                continue
            permits = 1
            while permits < terminals and self._idle_terminals.acquire(blocking=False):
                permits += 1
            try:
                entries = self.guard.call_from_loop(self._next_entries, permits)
                self._loop_backoff.reset()
            except redis.RedisError as error:
                entries = []
                self._on_read_error(error)
            for entry in entries:
                with self._in_hand_lock:
                    self._in_hand.add(entry[0])
                self._work.put(entry)
            for _ in range(permits - len(entries)):
                self._idle_terminals.release()

    def _next_entries(self, count: int) -> list[Entry]:
        if not self.group_ready.is_set():
            self.ensure_group()
        if time.monotonic() >= self._next_claim:
            claimed = self._claim_orphans(count)
            if claimed:
                return claimed
        settings = self.settings
        response: Any = self._redis.xreadgroup(
            settings.consumer_group, settings.consumer_name, {settings.request_stream: ">"},
            count=count, block=settings.read_block_ms,
        )
        if not response:
            return []
        return [(entry_id, fields, 1) for entry_id, fields in response[0][1] if fields is not None]

    def _claim_orphans(self, count: int) -> list[Entry]:
        """Take over entries another consumer left pending past CLAIM_IDLE_SECONDS."""
        settings = self.settings
        response: Any = self._redis.xautoclaim(
            settings.request_stream, settings.consumer_group, settings.consumer_name,
            min_idle_time=int(settings.claim_idle_seconds * 1000), start_id=self._claim_cursor, count=count,
        )
        self._claim_cursor = response[0]
        if self._claim_cursor == b"0-0":
            # A full pass over the pending list is done; the next one waits an interval.
            self._next_claim = time.monotonic() + self._claim_interval
        with self._in_hand_lock:
            claimed = [(entry_id, fields) for entry_id, fields in response[1]
                       if fields is not None and entry_id not in self._in_hand]
        if not claimed:
            return []
        ids = sorted((entry_id for entry_id, _ in claimed), key=_id_key)
        details = self._redis.xpending_range(
            settings.request_stream, settings.consumer_group, min=ids[0], max=ids[-1],
            count=len(ids) + settings.worker_terminals + 16, consumername=settings.consumer_name,
        )
        deliveries = {item["message_id"]: int(item["times_delivered"]) for item in details}
        metrics.CLAIMED.inc(len(claimed))
        log.info("claimed orphaned entries", extra={"count": len(claimed)})
        return [(entry_id, fields, deliveries.get(entry_id, 2)) for entry_id, fields in claimed]

    def _on_read_error(self, error: redis.RedisError) -> None:
        if isinstance(error, redis.ResponseError) and "NOGROUP" in str(error):
            # Redis lost the stream or the group (restart without persistence): recreate.
            log.warning("consumer group missing, recreating it")
            self.group_ready.clear()
            self._writer.ttl.forget_all()  # the reply streams went with it
            return
        delay = self._loop_backoff.next_delay()
        log.warning("reading the request stream failed",
                    extra={"error": repr(error), "retry_in_seconds": round(delay, 3)})
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
                log.exception("unexpected error handling an entry", extra={"entry_id": entry[0].decode()})
            finally:
                with self._in_hand_lock:
                    self._in_hand.discard(entry[0])
                metrics.TERMINALS_ACTIVE.dec()
                self._idle_terminals.release()

    def _count(self, outcome: str) -> None:
        metrics.PROCESSED_BY_OUTCOME[outcome].inc()
        with self._processed_lock:
            self.processed += 1

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int, rng: random.Random) -> None:
        started = time.perf_counter()
        try:
            request = contract.WeatherRequest.from_fields(fields)
        except contract.PoisonEntry as poison:
            self._dead_letter(entry_id, fields, f"poison: {poison}", deliveries, "poison")
            return
        if deliveries > self.settings.max_deliveries:
            self._dead_letter(entry_id, fields, f"delivered {deliveries} times (MAX_DELIVERIES is "
                              f"{self.settings.max_deliveries})", deliveries, "max_deliveries")
            return
        token = request_id_var.set(request.request_id)
        try:
            with consumer_span("process weather request", request.traceparent) as span:
                span.set_attribute("messaging.message.id", entry_id.decode())
                span.set_attribute("messaging.message.delivery_count", deliveries)
                self._process(entry_id, request, rng)
        except redis.RedisError as error:
            # Not acknowledged: the entry stays pending and is delivered again later.
            log.warning("could not reply or acknowledge; entry stays pending",
                        extra={"entry_id": entry_id.decode(), "error": repr(error)})
        finally:
            request_id_var.reset(token)
            metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)

    def _process(self, entry_id: bytes, request: contract.WeatherRequest, rng: random.Random) -> None:
        if request.expired():
            # The proxy has already answered 504; doing the work now helps nobody.
            self._outcomes.submit(Outcome(entry_id))
            self._count("expired")
            log.info("skipped expired request", extra={"entry_id": entry_id.decode(), "subject": request.subject})
            return
        delay = self.settings.processing_delay_ms
        if delay.high_ms:
            time.sleep(rng.uniform(delay.low_ms, delay.high_ms) / 1000)
        try:
            reply = contract.Reply(
                request.request_id, contract.STATUS_OK,
                build_forecast(request.city, request.location, request.request_id, rng),
            )
            outcome = "ok"
        except Exception as error:  # a bug in the work still owes the caller an answer
            log.exception("processing failed")
            reply = contract.Reply(request.request_id, contract.STATUS_ERROR,
                                   {"error": "processing_failed", "detail": type(error).__name__})
            outcome = "error"
        self._until_deadline(request, Outcome(entry_id, request.reply_to, reply))
        self._count(outcome)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("replied", extra={"entry_id": entry_id.decode(), "outcome": outcome, "subject": request.subject})

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
        self, entry_id: bytes, fields: dict[bytes, bytes], reason: str, deliveries: int, category: str
    ) -> None:
        try:
            self.guard.call(self._writer.dead_letter_and_ack, entry_id, fields, reason, deliveries,
                            self.settings.consumer_name)
        except redis.RedisError as error:
            log.warning("could not dead-letter; entry stays pending",
                        extra={"entry_id": entry_id.decode(), "error": repr(error)})
            return
        self._count("dead_lettered")
        metrics.DEAD_LETTERED.labels(category).inc()
        log.warning("entry dead-lettered",
                    extra={"entry_id": entry_id.decode(), "reason": reason, "deliveries": deliveries})

    # -- housekeeping --------------------------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL_SECONDS if self.group_ready.is_set() else 0.5):
            try:
                self.guard.call_from_loop(self.refresh_queue_metrics)
                removed = self.guard.call_from_loop(
                    self._janitor.remove_gone, int(self.settings.consumer_expiry_seconds * 1000)
                )
            except redis.RedisError as error:
                metrics.REDIS_UP.set(0)
                log.debug("housekeeping skipped", extra={"error": repr(error)})
                continue
            metrics.REDIS_UP.set(1)
            if removed:
                metrics.CONSUMERS_REMOVED.inc(len(removed))
                log.info("removed gone consumers", extra={"consumers": removed})

    def refresh_queue_metrics(self) -> None:
        settings = self.settings
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(settings.request_stream)
            pipe.xlen(settings.request_stream)
            pipe.xlen(settings.dead_letter_stream)
            groups, stream_length, dead_letters = pipe.execute(raise_on_error=False)
        if isinstance(groups, list):
            for group in groups:
                if group.get("name") == settings.consumer_group.encode():
                    pending = int(group.get("pending") or 0)
                    lag = group.get("lag")
                    # Redis reports no lag once entries were deleted in the undelivered
                    # range; the stream length is then the safe upper bound.
                    lag = int(lag) if lag is not None else int(stream_length or 0)
                    metrics.GROUP_PENDING.set(pending)
                    metrics.GROUP_LAG.set(lag)
                    metrics.QUEUE_DEPTH.set(lag + pending)
        if isinstance(stream_length, int):
            metrics.REQUEST_STREAM_LENGTH.set(stream_length)
        if isinstance(dead_letters, int):
            metrics.DEAD_LETTER_LENGTH.set(dead_letters)
