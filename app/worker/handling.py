"""What a terminal does with one delivery, start to end: decode it, dead-letter poison and
entries delivered too often, skip the expired and those too late to be done in time, do
the work, and hand the reply to app.worker.outcomes, which writes it with its neighbours'
and acknowledges it."""

from __future__ import annotations

import logging
import random
import threading
import time

import redis

from app.shared import contract
from app.shared.logs import request_id_var
from app.shared.tracing import consumer_span
from app.worker import metrics
from app.worker.delivery import Delivery
from app.worker.drain import DrainMeter
from app.worker.forecast import build_forecast
from app.worker.outcomes import Outcome, OutcomeWriter
from app.worker.settings import DelayRange

log = logging.getLogger("app.worker")


class Handler:
    def __init__(self, writer: OutcomeWriter, meter: DrainMeter, *, consumer: str, max_deliveries: int,
                 processing_delay: DelayRange) -> None:
        self.writer = writer
        self._meter = meter
        self._consumer = consumer
        self._max_deliveries = max_deliveries
        self._delay = processing_delay
        self.processed = 0
        self._processed_lock = threading.Lock()

    def handle(self, delivery: Delivery, rng: random.Random) -> None:
        started = time.perf_counter()
        try:
            request = contract.WeatherRequest.from_fields(delivery.fields)
        except contract.PoisonEntry as poison:
            self._dead_letter(delivery, f"poison: {poison}", "poison")
            return
        if delivery.deliveries > self._max_deliveries:
            self._dead_letter(delivery, f"delivered {delivery.deliveries} times (MAX_DELIVERIES is "
                              f"{self._max_deliveries})", "max_deliveries", request)
            return
        token = request_id_var.set(request.request_id)
        try:
            with consumer_span("process weather request", request.traceparent) as span:
                span.set_attribute("messaging.message.id", delivery.entry_id.decode())
                span.set_attribute("messaging.message.delivery_count", delivery.deliveries)
                worked = self._process(Outcome(delivery.stream, delivery.entry_id, fields=delivery.fields,
                                                       deliveries=delivery.deliveries), request, rng)
            if worked is not None:
                self._meter.finished(worked, time.perf_counter() - started)
        except redis.RedisError as error:
            # Not acknowledged: the entry stays pending and is delivered again later.
            log.warning("could not reply or acknowledge; entry stays pending",
                        extra={"entry_id": delivery.entry_id.decode(), "error": repr(error)})
        finally:
            request_id_var.reset(token)
            metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)

    def _count(self, outcome: str) -> None:
        metrics.PROCESSED_BY_OUTCOME[outcome].inc()
        with self._processed_lock:
            self.processed += 1

    def _process(self, taken: Outcome, request: contract.WeatherRequest, rng: random.Random) -> float | None:
        """``taken`` names the entry; as it is, it acknowledges without a reply. Returns the
        seconds the work took, or None when it was not done."""
        now_ms = contract.now_ms()
        if request.expired(now_ms):
            # The proxy has already answered 504; doing the work now helps nobody. A poller
            # of an async request learns it from its record (the 504 a call would get).
            self.writer.send(taken.answered(None, _expired(request), request.result_key, request.result_ttl_ms)
                             if request.result_key else taken, request.deadline_ms)
            self._count("expired")
            log.info("skipped expired request",
                     extra={"entry_id": taken.entry_id.decode(), "subject": request.subject})
            return None
        expected = self._meter.expected_work_seconds()
        if expected is not None and _made_late_by_waiting(request.deadline_ms, taken.entry_id, now_ms, expected):
            # Its caller would be gone before the reply: answered now (the proxy answers 504
            # at once instead of at the deadline) and the terminal is free for an entry
            # that can still be served in time.
            self.writer.send(taken.answered(request.reply_to or None, _expired(request), request.result_key,
                                            request.result_ttl_ms), request.deadline_ms)
            self._count("late")
            log.debug("skipped a request too late to be done in time",
                     extra={"entry_id": taken.entry_id.decode(), "left_ms": request.deadline_ms - now_ms,
                            "expected_work_ms": round(expected * 1000)})
            return None
        if request.result_key:
            try:
                self.writer.mark_started(request.result_key)
            except redis.RedisError as error:
                log.info("could not mark the result record in work", extra={"error": repr(error)})
        work_started = time.perf_counter()
        if self._delay.high_ms:
            time.sleep(rng.uniform(self._delay.low_ms, self._delay.high_ms) / 1000)
        try:
            reply = request.reply(contract.STATUS_OK,
                                  build_forecast(request.city, request.location, request.request_id, rng))
            outcome = "ok"
        except Exception as error:  # a bug in the work still owes the caller an answer
            log.exception("processing failed")
            reply = request.reply(contract.STATUS_ERROR, {"error": "processing_failed", "detail": type(error).__name__})
            outcome = "error"
        worked = time.perf_counter() - work_started
        self.writer.send(taken.answered(request.reply_to or None, reply, request.result_key, request.result_ttl_ms),
                         request.deadline_ms)
        self._count(outcome)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("replied", extra={"entry_id": taken.entry_id.decode(), "outcome": outcome,
                                        "subject": request.subject, "deliveries": taken.deliveries})
        return worked

    def _dead_letter(self, delivery: Delivery, reason: str, category: str,
                     request: contract.WeatherRequest | None = None) -> None:
        try:
            self.writer.dead_letter(delivery.stream, delivery.entry_id, delivery.fields, reason, delivery.deliveries,
                                    self._consumer)
        except redis.RedisError as error:
            log.warning("could not dead-letter; entry stays pending",
                        extra={"entry_id": delivery.entry_id.decode(), "error": repr(error)})
            return
        self._count("dead_lettered")
        metrics.DEAD_LETTERED.labels(category).inc()
        if request is not None and request.result_key:
            # Its poller learns it failed instead of seeing it queued until the record expires.
            try:
                self.writer.finish_record(request.result_key, request.result_ttl_ms, request.reply(
                    contract.STATUS_ERROR, {"error": "dead_lettered", "detail": reason}))
            except redis.RedisError as error:
                log.info("could not mark the result record dead-lettered", extra={"error": repr(error)})
        log.warning("entry dead-lettered", extra={"stream": delivery.stream, "entry_id": delivery.entry_id.decode(),
                                                  "reason": reason, "deliveries": delivery.deliveries})


def _made_late_by_waiting(deadline_ms: int, entry_id: bytes, now_ms: int, expected_seconds: float) -> bool:
    """Whether an entry has less time left than the work takes, and had enough when it was
    queued (its id's time): its wait made it late. One whose whole deadline is shorter than
    the expected work is done anyway: no wait would have made it fit, and skipping every such
    entry would keep the figure that skips them from ever changing."""
    added_ms = int(entry_id.partition(b"-")[0] or 0)
    return (deadline_ms - now_ms) / 1000 < expected_seconds <= (deadline_ms - added_ms) / 1000


def _expired(request: contract.WeatherRequest) -> contract.Reply:
    return request.reply(contract.STATUS_ERROR, {"error": contract.ERROR_EXPIRED, "detail": "its deadline passed"})
