"""One request's round trip: the entry into the request stream, then its reply or its deadline."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gevent
import redis

from app.proxy import metrics
from app.proxy.admission import Admission, AdmitEverything, Verdict
from app.proxy.edge import RequestId
from app.proxy.enqueue import Enqueuer, KeptResult, NoShardAvailable
from app.proxy.failures import (
    InProgress,
    KeyReused,
    NoReply,
    Overloaded,
    QueueUnavailable,
    Shed,
    WorkerFailed,
)
from app.proxy.horizon import Horizon
from app.proxy.once import OnceEnqueuer, OnceOnly, Placed
from app.proxy.prefer import Preferences
from app.proxy.priority import DEFAULT_URGENCY
from app.proxy.replies import ReplyListener
from app.proxy.results import Results
from app.shared import contract
from app.shared.resilience import CircuitOpen, RedisGuard
from app.shared.tracing import current_traceparent

log = logging.getLogger("app.proxy")

# An XADD answers in well under a millisecond; a try that takes this long is a stuck
# connection, and the retry budget (REDIS_RETRY_MAX_SECONDS) is better spent on another.
ENQUEUE_SOCKET_TIMEOUT_SECONDS = 0.3

# A repeat of an idempotent request polls its first request's record this often.
REPEAT_POLL_SECONDS = 0.05

_ROUNDTRIP = {result: metrics.ROUNDTRIP_SECONDS.labels(result) for result in ("ok", "error", "timeout")}
_ENQUEUE_ERRORS = metrics.REDIS_ERRORS.labels("enqueue")


@dataclass(frozen=True, slots=True)
class Accepted:
    """An async request queued and not answered yet: where its result will be."""

    async_id: str


class RoundTrips:
    """A request's way through the queue: a reply body, or a RoundTripFailure saying why not."""

    def __init__(self, enqueuer: Enqueuer, once: OnceEnqueuer, listener: ReplyListener, guard: RedisGuard,
                 horizon: Horizon, results: Results, admission: Admission | AdmitEverything, *,
                 timeout_seconds: float, retry_max_seconds: float, max_inflight: int,
                 async_deadline_seconds: float = 0.0, result_ttl_seconds: float = 300.0,
                 idempotency_ttl_seconds: float = 86_400.0) -> None:
        self._enqueuer = enqueuer
        self._once = once
        self._listener = listener
        self._guard = guard
        self._timeout_seconds = timeout_seconds
        self._timeout_ms = int(timeout_seconds * 1000)
        # An async request is never given less time than a synchronous one.
        self._async_deadline_ms = int(max(async_deadline_seconds, timeout_seconds) * 1000)
        self.async_enabled = async_deadline_seconds > 0
        self.async_deadline_seconds = self._async_deadline_ms / 1000
        self._result_ttl_ms = int(result_ttl_seconds * 1000)
        self._horizon = horizon
        self._results = results
        self._admission = admission
        self._idempotency_ttl_ms = int(idempotency_ttl_seconds * 1000)
        self._max_inflight = max_inflight
        self._admitted = 0
        # The retry budget plus the longest a try can block, never past the deadline.
        self._enqueue_wait = min(timeout_seconds, retry_max_seconds + 2 * ENQUEUE_SOCKET_TIMEOUT_SECONDS)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Holds one of MAX_INFLIGHT_PER_PROCESS places from before the body is read until the
        answer: under overload the refusal must cost the least CPU, or refusing crowds out the
        requests that were accepted. Counted here, not by the waiting replies, because reading
        the body yields to other greenlets, which would all pass a check made before it."""
        if self._admitted >= self._max_inflight:
            metrics.OVERLOADED.inc()
            raise Overloaded()
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    def _admit(self, deadline_seconds: float, urgency: int, caller: str, *, patient: bool,
               only: str | None = None) -> Verdict:
        """Where this request may go (not the ``deep`` shards; the lane if ``prompt``);
        Shed when no shard it may use can serve it in time (counted by ``_shed``)."""
        verdict = self._admission.admit(deadline_seconds, urgency, patient=patient, only=only, caller=caller)
        if not verdict.refused:
            metrics.ADMITTED[urgency].inc()
            return verdict
        async_would_fit = not patient and self.async_enabled and not self._admission.judge(
            self.async_deadline_seconds, urgency, patient=True, only=only, caller=caller).refused
        raise Shed(verdict.expected_wait, verdict.retry_after, verdict.reason == "cold", async_would_fit,
                   reason=verdict.reason, urgency=urgency)

    def _shed(self, refusal: Shed) -> Shed:
        metrics.SHED_BY[refusal.reason, refusal.urgency].inc()
        return refusal

    def ask(self, city: str, location: str, subject: str, request_id: RequestId,
            urgency: int = DEFAULT_URGENCY, caller: str = "") -> dict[str, Any]:
        try:
            verdict = self._admit(self._timeout_seconds, urgency, caller, patient=False)
        except Shed as refusal:
            raise self._shed(refusal) from None
        # Replies are routed by a correlation id; a generated request id is unique already
        # and serves as one (the entry then carries no separate cid).
        correlation_id = request_id.value if request_id.generated else uuid.uuid4().hex
        sent_ms = contract.now_ms()
        entry = contract.WeatherRequest(
            # The reply stream is the one of the shard the enqueuer picks.
            request_id=request_id.value, reply_to="", deadline_ms=sent_ms + self._timeout_ms,
            city=city, location=location, traceparent=current_traceparent(),
            subject=subject, correlation_id=correlation_id,
        )
        reply, elapsed, _ = self._round_trip(entry, sent_ms, entry.deadline_ms, None, verdict.deep, verdict.prompt)
        if reply is None:
            metrics.TIMEOUTS.inc()
            _ROUNDTRIP["timeout"].observe(elapsed)
            log.info("request timed out", extra={"timeout_seconds": self._timeout_seconds})
            raise NoReply(self._timeout_seconds)
        return self._body(reply, elapsed)

    def accept(self, city: str, location: str, subject: str, request_id: RequestId,
               preferences: Preferences, urgency: int = DEFAULT_URGENCY, caller: str = "") -> dict[str, Any] | Accepted:
        """A request whose answer may come later (RFC 7240): queued with a record any proxy
        reads, then its reply if it comes within the wait the caller allows (none with
        respond-async alone), else Accepted: the caller polls the record."""
        try:
            verdict = self._admit(self.async_deadline_seconds, urgency, caller, patient=True)
        except Shed as refusal:
            raise self._shed(refusal) from None
        wait = 0.0 if preferences.wait_seconds is None else min(preferences.wait_seconds, self._timeout_seconds)
        correlation_id = request_id.value if request_id.generated else uuid.uuid4().hex
        sent_ms = contract.now_ms()
        entry = contract.WeatherRequest(
            request_id=request_id.value, reply_to="", deadline_ms=sent_ms + self._async_deadline_ms,
            city=city, location=location, traceparent=current_traceparent(),
            subject=subject, correlation_id=correlation_id,
        )
        kept = KeptResult(subject, self._async_deadline_ms + self._result_ttl_ms, self._result_ttl_ms,
                          wants_reply=wait > 0)
        self._horizon.issued(entry.deadline_ms)
        reply, elapsed, async_id = self._round_trip(entry, sent_ms, sent_ms + int(wait * 1000), kept,
                                                    verdict.deep, verdict.prompt)
        if reply is None:
            metrics.ACCEPTED.inc()
            return Accepted(async_id)
        return self._body(reply, elapsed)

    def once(self, city: str, location: str, subject: str, request_id: RequestId, preferences: Preferences,
             fingerprint: str, body_hash: str, urgency: int = DEFAULT_URGENCY,
             caller: str = "") -> dict[str, Any] | Accepted:
        """A request with an Idempotency-Key: done at most once per key and caller. The first
        is queued with the key (its result kept as long as the key); a repeat with the same
        body gets the first one's outcome, waiting for it as a call would (409 if async and
        not done yet); a repeat with another body is refused. A repeat is answered whatever
        the load: one admission refuses is looked up before the refusal stands, and one it
        let in is taken off its count."""
        pollable = preferences.pollable and self.async_enabled
        wait = self._timeout_seconds
        if pollable:
            wait = 0.0 if preferences.wait_seconds is None else min(preferences.wait_seconds, self._timeout_seconds)
        try:
            verdict = self._admit(self.async_deadline_seconds if pollable else self._timeout_seconds, urgency,
                                  caller, patient=pollable, only=self._once.shard_of(fingerprint))
        except Shed as refusal:
            earlier = self._once.find(fingerprint)
            answer = None if earlier is None else self._repeat(earlier, body_hash, subject, pollable, wait)
            if answer is None:  # new, or the first never done: this one would be, and cannot be now
                raise self._shed(refusal) from None
            return answer
        replaces = ""
        for _ in range(2):  # the second time only to replace a first try that expired unseen
            correlation_id = request_id.value if request_id.generated else uuid.uuid4().hex
            sent_ms = contract.now_ms()
            deadline_ms = sent_ms + (self._async_deadline_ms if pollable else self._timeout_ms)
            entry = contract.WeatherRequest(
                request_id=request_id.value, reply_to="", deadline_ms=deadline_ms, city=city, location=location,
                traceparent=current_traceparent(), subject=subject, correlation_id=correlation_id,
            )
            ttl_ms = max(self._idempotency_ttl_ms, deadline_ms - sent_ms + self._result_ttl_ms)
            kept = KeptResult(subject, ttl_ms, self._idempotency_ttl_ms, wants_reply=wait > 0)
            once = OnceOnly(fingerprint, body_hash, self._idempotency_ttl_ms, replaces)
            if pollable:
                self._horizon.issued(deadline_ms)
            waiter = self._listener.expect(correlation_id) if wait > 0 else None
            started = time.perf_counter()
            try:
                placed = self._enqueue_once(entry, sent_ms, kept, once, verdict.prompt)
                if placed.created:
                    remaining = sent_ms / 1000 + wait - time.time()
                    reply = waiter.get(timeout=remaining, block=True) if waiter is not None and remaining > 0 else None
                else:
                    reply = None
            except gevent.Timeout:
                reply = None
            finally:
                if waiter is not None:
                    self._listener.forget(correlation_id)
            if placed.created:
                if reply is not None:
                    return self._body(reply, time.perf_counter() - started)
                if pollable:
                    metrics.ACCEPTED.inc()
                    return Accepted(placed.async_id)
                metrics.TIMEOUTS.inc()
                raise NoReply(self._timeout_seconds)
            self._admission.withdraw(verdict)  # it queued nothing: given back before any wait
            answer = self._repeat(placed, body_hash, subject, pollable, wait)
            if answer is not None:
                return answer
            self._admission.withdraw(verdict, count=1)  # the first never done: this one queues it
            replaces = placed.async_id
        raise NoReply(self._timeout_seconds)

    def _repeat(self, placed: Placed, body_hash: str, subject: str, pollable: bool, wait: float
                ) -> dict[str, Any] | Accepted | None:
        """A repeat's answer: the first request's outcome, waited for as a call would; None
        when the first expired before any worker took it (the repeat may do it)."""
        if placed.body_hash != body_hash:
            raise KeyReused("this Idempotency-Key came with another body")
        metrics.IDEMPOTENT_REPEATS.inc()
        started = time.perf_counter()
        record = self._await_record(placed.async_id, subject, 0.0 if pollable else wait)
        if record is None or record.reply is None:
            if pollable:
                raise InProgress(placed.async_id)
            metrics.TIMEOUTS.inc()
            raise NoReply(self._timeout_seconds)
        if record.reply.body.get("error") == contract.ERROR_EXPIRED:
            return None
        return self._body(record.reply, time.perf_counter() - started)

    def _await_record(self, async_id: str, subject: str, wait_seconds: float) -> contract.ResultRecord | None:
        """The first request's record once done, polled until ``wait_seconds`` have passed."""
        deadline = time.monotonic() + wait_seconds
        while True:
            record = self._results.find(async_id, subject)
            if record is not None and record.reply is not None:
                return record
            if time.monotonic() >= deadline:
                return record
            gevent.sleep(REPEAT_POLL_SECONDS)

    def _enqueue_once(self, entry: contract.WeatherRequest, sent_ms: int, kept: KeptResult,
                      once: OnceOnly, prompt: bool) -> Placed:
        with self._queue_failures("the key's shard cannot take it"):
            return self._once.enqueue(entry, self._horizon.minid(sent_ms), self._enqueue_wait, kept, once, prompt)

    def _round_trip(self, entry: contract.WeatherRequest, sent_ms: int, wait_until_ms: int,
                    kept: KeptResult | None, deep: frozenset[str], prompt: bool
                    ) -> tuple[contract.Reply | None, float, str]:
        """The entry queued, then its reply if one comes before ``wait_until_ms`` (none is
        awaited for an async request nobody waits on)."""
        waits = kept is None or kept.wants_reply
        waiter = self._listener.expect(entry.correlation_id) if waits else None
        started = time.perf_counter()
        metrics.INFLIGHT.inc()
        try:
            async_id = self._enqueue(entry, sent_ms, kept, deep, prompt)
            remaining = wait_until_ms / 1000 - time.time()
            reply = waiter.get(timeout=remaining, block=True) if waiter is not None and remaining > 0 else None
        except gevent.Timeout:
            reply = None
        finally:
            metrics.INFLIGHT.dec()
            if waiter is not None:
                self._listener.forget(entry.correlation_id)
        return reply, time.perf_counter() - started, async_id

    def _enqueue(self, entry: contract.WeatherRequest, sent_ms: int, kept: KeptResult | None,
                 deep: frozenset[str], prompt: bool) -> str:
        with self._queue_failures("no shard available"):
            return self._enqueuer.enqueue(entry, self._horizon.minid(sent_ms), self._enqueue_wait, kept, deep,
                                          prompt)[1]

    @contextmanager
    def _queue_failures(self, no_shard: str) -> Iterator[None]:
        """An enqueue's Redis failure as the 503 it is answered with, counted and logged."""
        try:
            yield
        except CircuitOpen:
            _ENQUEUE_ERRORS.inc()
            raise QueueUnavailable(self._guard.retry_after_header(), breaker_open=True) from None
        except NoShardAvailable as error:
            _ENQUEUE_ERRORS.inc()
            log.warning(f"enqueue failed: {no_shard}", extra={"error": repr(error)})
            raise QueueUnavailable(str(max(1, math.ceil(error.retry_after))), breaker_open=False,
                                   replicas_short=error.replicas_short) from None
        except redis.RedisError as error:
            _ENQUEUE_ERRORS.inc()
            log.warning("enqueue failed", extra={"error": repr(error)})
            raise QueueUnavailable("1", breaker_open=False) from None

    def _body(self, reply: contract.Reply, elapsed: float) -> dict[str, Any]:
        if not reply.ok:
            if reply.body.get("error") == contract.ERROR_EXPIRED:
                # A worker saw it could not be done in time and said so at once.
                metrics.TIMEOUTS.inc()
                _ROUNDTRIP["timeout"].observe(elapsed)
                raise NoReply(self._timeout_seconds)
            _ROUNDTRIP["error"].observe(elapsed)
            raise WorkerFailed(str(reply.body.get("detail", "the worker could not process it")))
        _ROUNDTRIP["ok"].observe(elapsed)
        body: dict[str, Any] = reply.body
        return body
