"""Writing outcomes: replies and acknowledgements of a whole round, and dead letters.

A terminal hands its entry's outcome to ``OutcomeWriter.send`` and is free once it is in
Redis: outcomes of terminals that finish together share one round trip
(app.shared.batching), inside the process's circuit breaker, and a reply that Redis could
not take yet is tried again while its caller still waits.

Outcomes of entries that finish together go out as ONE transaction per shard (MULTI/EXEC,
on the shard's node): each reply's XADD (and an async request's result record), then one
XACK per stream naming the entries. One round trip per batch, and an entry is never
acknowledged without its reply:
- a reply Redis refuses for memory (noeviction) is refused as the transaction is queued,
  so EXEC runs nothing and the batch stays pending, to be delivered again;
- a reply that fails as it runs (a reply stream made another type of key: no proxy writes
  one) is acknowledged with its neighbours, so its entry is moved to the dead-letter stream
  with the reason at once, as poison is, rather than being lost.
A node that is down fails only the outcomes of its own shards (app.shared.routing).

The reply stream's TTL rides in the same transaction, but only when a stream is new to this
worker or its last refresh is a quarter of the TTL old (the owning proxy refreshes it
too), not with every reply.

With REDIS_WAIT_REPLICAS above 0 each node's pipeline ends with one WAIT. A shortfall is
reported (weather_worker_replies_unconfirmed_total) and not retried: a transaction
replicates as one unit, so a reply and its acknowledgement are lost together or kept together. Lost in
a failover, the entry is pending again on the new primary and answered again; retrying
here would only hold a terminal while its caller waits.

An async request (it names a result record) has its outcome written into that record in
the same transaction as its reply (or instead of one when nobody waits on a stream), before the
XACK. A record that is gone (expired) is not created again.

Dead letters are rare and keep a script of their own: append and XACK atomically, on keys of
one slot (the request stream and its dead-letter stream).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.shared import contract
from app.shared.batching import Batcher
from app.shared.replication import ReplicasBehind
from app.shared.resilience import CircuitOpen, LoopBackoff, RedisGuard, is_outage
from app.shared.routing import NodeWriter, Routed
from app.worker import metrics

log = logging.getLogger("app.worker")

# Fill in a record only while it exists: a late write must not bring back an expired one.
# Nor change one that is done: an entry run twice (a worker or primary frozen past its lease)
# would replace a result a caller may already have read (the soak saw it).
_UPDATE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] == 'state' and fields[i + 1] == 'done' then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

_DEAD_LETTER_AND_ACK = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
"""

# Forget reply streams not written for this long: their owner refreshes them or they expire.
_TTL_MEMORY_SECONDS = contract.REPLY_STREAM_TTL_SECONDS


@dataclass(frozen=True, slots=True)
class Outcome:
    # The request stream (shard) the entry came from, where it is acknowledged.
    stream: str
    entry_id: bytes
    # None for an entry acknowledged without a reply (its caller gave up already).
    reply_to: str | None = None
    reply: contract.Reply | None = None
    # An async request's record, filled with the reply and then kept result_ttl_ms.
    result_key: str = ""
    result_ttl_ms: int = 0
    # The entry as read: dead-lettered with these if its reply fails once acknowledged.
    fields: dict[bytes, bytes] | None = None
    deliveries: int = 1

    def answered(self, reply_to: str | None, reply: contract.Reply, result_key: str = "",
                 result_ttl_ms: int = 0) -> Outcome:
        return Outcome(self.stream, self.entry_id, reply_to, reply, result_key, result_ttl_ms, self.fields,
                       self.deliveries)

    @property
    def writes(self) -> bool:
        return self.reply is not None and (self.reply_to is not None or bool(self.result_key))


class ReplyTtl:
    """Which reply streams need their TTL set again, at most once per refresh period each."""

    def __init__(self, refresh_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._set_at: dict[str, float] = {}
        self._next_prune = clock() + _TTL_MEMORY_SECONDS

    def due(self, stream: str) -> bool:
        return self._clock() - self._set_at.get(stream, -1e18) >= self._refresh_seconds

    def refreshed(self, streams: Sequence[str]) -> None:
        """Called once Redis confirmed the EXPIREs: a failed pipeline leaves them due."""
        now = self._clock()
        for stream in streams:
            self._set_at[stream] = now
        if now >= self._next_prune:
            self._set_at = {name: at for name, at in self._set_at.items() if now - at < _TTL_MEMORY_SECONDS}
            self._next_prune = now + _TTL_MEMORY_SECONDS

    def forget_all(self) -> None:
        """Redis lost its data (restart without persistence): every stream is new again."""
        self._set_at.clear()


class OutcomeWriter:
    def __init__(self, replies: NodeWriter, acks: NodeWriter, guard: RedisGuard, *, group: str, consumer: str,
                 dead_letter_maxlen: int, reconnect_max_seconds: float, hash_tagged: bool = False) -> None:
        """``replies`` sends the outcomes and dead letters (with WAIT when asked), ``acks`` the
        outcomes without a reply and the marks of work started (never waited for).
        ``hash_tagged``: keys of one script call must share a slot (a cluster)."""
        self._replies = replies
        self._acks = acks
        self._guard = guard
        self._group = group
        self._consumer = consumer
        self._dead_letter_maxlen = dead_letter_maxlen
        self._reconnect_max_seconds = reconnect_max_seconds
        self._hash_tagged = hash_tagged
        self.ttl = ReplyTtl(contract.REPLY_STREAM_TTL_SECONDS / 4)
        self._batcher: Batcher[Outcome] = Batcher(self._write_batch, "outcomes")

    def send(self, outcome: Outcome, deadline_ms: int) -> None:
        """Written with the outcomes of every terminal that finishes meanwhile; tried again
        across an outage or a failover until ``deadline_ms`` (the caller's). Raises the
        outcome's error otherwise: the entry then stays pending and is delivered again
        later, so giving up loses nothing. Retrying is what lets a reply reach a new
        primary in time."""
        pacing: LoopBackoff | None = None  # only a failed write needs one
        while True:
            try:
                self._batcher.submit(outcome)
                return
            except redis.RedisError as error:
                if not (is_outage(error) or isinstance(error, CircuitOpen)) or contract.now_ms() > deadline_ms:
                    raise
                pacing = pacing or LoopBackoff(0.05, self._reconnect_max_seconds)
                delay = pacing.next_delay()
                log.info("reply not written yet; retrying", extra={"error": repr(error), "retry_in_seconds": delay})
                time.sleep(delay)

    def _write_batch(self, batch: list[Outcome]) -> list[BaseException | None]:
        """One try per batch inside the breaker (while it is open the try asks Redis first, so
        a recovery is noticed here). Raised, so that the breaker counts it, only when Redis
        failed every outcome: one node of a cluster failing is not an outage of the worker."""
        return self._guard.call_from_loop(self._write_or_raise_outage, batch)

    def _write_or_raise_outage(self, batch: list[Outcome]) -> list[BaseException | None]:
        errors = self.write(batch)
        first = errors[0] if errors else None
        if first is not None and is_outage(first) and all(error is not None and is_outage(error) for error in errors):
            raise first
        return errors

    def write(self, outcomes: Sequence[Outcome]) -> list[BaseException | None]:
        """Per outcome: None when replied (if it had a reply) and acknowledged, else its error."""
        transactions: dict[object, _Transaction] = {}
        for index, outcome in enumerate(outcomes):
            transactions.setdefault(self._call_of(index, outcome), _Transaction()).add(index, outcome, self.ttl)
        errors: list[BaseException | None] = [None] * len(outcomes)
        acknowledged_unanswered: list[tuple[Outcome, BaseException]] = []
        for writer, sending in ((self._replies, [t for t in transactions.values() if t.writes]),
                                (self._acks, [t for t in transactions.values() if not t.writes])):
            if not sending:
                continue
            results = writer.execute([transaction.routed(self._group) for transaction in sending])
            for transaction, result in zip(sending, results, strict=True):
                for index, error in transaction.errors(result).items():
                    errors[index] = error
                acknowledged_unanswered += transaction.failed_inside(result)
                self.ttl.refreshed([key for key, index in transaction.expiring.items() if errors[index] is None])
        for outcome, error in acknowledged_unanswered:
            self._dead_letter_unanswered(outcome, error)
        return errors

    def _dead_letter_unanswered(self, outcome: Outcome, error: BaseException) -> None:
        reason = f"reply not written: {error}"
        log.error("reply failed inside its transaction; entry dead-lettered",
                  extra={"stream": outcome.stream, "entry_id": outcome.entry_id.decode(), "reason": reason})
        metrics.DEAD_LETTERED.labels("reply_failed").inc()
        try:
            self.dead_letter_and_ack(outcome.stream, outcome.entry_id, outcome.fields or {}, reason,
                                     outcome.deliveries, self._consumer)
        except redis.RedisError as failure:
            log.error("could not dead-letter an acknowledged entry whose reply failed",
                      extra={"entry_id": outcome.entry_id.decode(), "error": repr(failure)})

    def _call_of(self, index: int, outcome: Outcome) -> object:
        """Which transaction an outcome goes in: one per shard in a cluster (its hash tag: a
        transaction's keys must share a slot), one in all on a single Redis. An entry naming a
        key of another slot (no proxy writes one) gets one of its own, which fails alone."""
        if not self._hash_tagged:
            return None
        tag = contract.shard_tag_of(outcome.stream)
        for key in (outcome.reply_to, outcome.result_key):
            if key and contract.shard_tag_of(key) != tag:
                return index
        return tag

    def mark_started(self, result_key: str) -> None:
        """Tells a poller the request is in work; best effort (a poll then says queued)."""
        result, = self._acks.execute([Routed(result_key, update_record(
            result_key, contract.started_record(contract.now_ms())))])
        if isinstance(result, BaseException):
            raise result

    def finish_record(self, result_key: str, ttl_ms: int, reply: contract.Reply) -> None:
        """A record's outcome written on its own (not with a reply): a dead-lettered request's."""
        result, = self._replies.execute([Routed(result_key, _finished(result_key, ttl_ms, reply))])
        if isinstance(result, BaseException):
            raise result

    def dead_letter(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str, deliveries: int,
                    consumer: str) -> None:
        """Moved to the shard's dead-letter stream and acknowledged, inside the breaker with its retries."""
        self._guard.call(self.dead_letter_and_ack, stream, entry_id, fields, reason, deliveries, consumer)

    def dead_letter_and_ack(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str, deliveries: int, consumer: str
    ) -> None:
        letter: dict[Any, Any] = dict(fields)
        letter[contract.FIELD_DLQ_REASON] = reason
        letter[contract.FIELD_DLQ_DELIVERIES] = deliveries
        letter[contract.FIELD_DLQ_SOURCE_ID] = entry_id
        letter[contract.FIELD_DLQ_CONSUMER] = consumer
        args: list[Any] = [self._group, entry_id, self._dead_letter_maxlen]
        for key, value in letter.items():
            args += (key, value)
        # One slot: a shard's dead-letter stream carries the shard's hash tag. EVAL, not
        # EVALSHA: dead letters are rare, and a primary promoted in a failover starts with
        # an empty script cache. Sent like the replies: WAIT on its node when asked.
        keys = [contract.dead_letter_stream(stream), stream]
        result, = self._replies.execute([Routed(stream, _eval(_DEAD_LETTER_AND_ACK, keys, args))])
        if isinstance(result, BaseException):
            raise result


class _Transaction:
    """The outcomes of one shard (one slot) as one MULTI/EXEC, and how its answer maps back."""

    __slots__ = ("expiring", "indexes", "outcomes", "writes")

    def __init__(self) -> None:
        self.outcomes: list[tuple[Outcome, bool]] = []  # each with whether it sets its stream's TTL
        self.indexes: list[int] = []  # the outcomes' places in the batch
        self.expiring: dict[str, int] = {}  # reply streams whose TTL is set, by the outcome that does it
        self.writes = False

    def add(self, index: int, outcome: Outcome, ttl: ReplyTtl) -> None:
        self.indexes.append(index)
        expire = False
        if outcome.reply is not None and outcome.reply_to is not None:
            expire = outcome.reply_to not in self.expiring and ttl.due(outcome.reply_to)
            if expire:
                self.expiring[outcome.reply_to] = index
        self.outcomes.append((outcome, expire))
        self.writes = self.writes or outcome.writes

    def routed(self, group: str) -> Routed:
        outcomes = self.outcomes

        def add(pipe: Any) -> None:
            pipe.execute_command("MULTI")
            acks: dict[str, list[bytes]] = {}
            for outcome, expire in outcomes:
                reply = outcome.reply
                if reply is not None and outcome.reply_to is not None:
                    pipe.xadd(outcome.reply_to, reply.to_fields(), maxlen=contract.REPLY_STREAM_MAXLEN,
                              approximate=True)
                    if expire:
                        pipe.expire(outcome.reply_to, contract.REPLY_STREAM_TTL_SECONDS)
                if reply is not None and outcome.result_key:
                    _finished(outcome.result_key, outcome.result_ttl_ms, reply)(pipe)
                acks.setdefault(outcome.stream, []).append(outcome.entry_id)
            for stream, entry_ids in acks.items():
                pipe.xack(stream, group, *entry_ids)
            pipe.execute_command("EXEC")
        return Routed(outcomes[0][0].stream, add)

    def errors(self, result: Any) -> dict[int, BaseException | None]:
        """Each outcome's error from the transaction's answer (its commands' answers, or its error)."""
        if isinstance(result, ReplicasBehind):
            # Written and acknowledged on the primary, as one unit: see the module's doc.
            metrics.REPLIES_UNCONFIRMED.inc(len(self.indexes))
            log.info("outcomes not confirmed by the replicas asked for; not written again",
                     extra={"error": str(result), "outcomes": len(self.indexes)})
            return dict.fromkeys(self.indexes)
        if isinstance(result, BaseException):
            return dict.fromkeys(self.indexes, result)
        return dict.fromkeys(self.indexes)

    def failed_inside(self, result: Any) -> list[tuple[Outcome, BaseException]]:
        """Outcomes acknowledged although a write of theirs failed inside EXEC."""
        if isinstance(result, BaseException) or not result or not isinstance(result[-1], list):
            return []
        answers = iter(result[-1])
        failed = []
        for outcome, expire in self.outcomes:
            writes = (outcome.reply is not None and outcome.reply_to is not None) * (1 + expire) + (
                outcome.reply is not None and bool(outcome.result_key))
            mine = [next(answers) for _ in range(writes)]
            error = next((answer for answer in mine if isinstance(answer, BaseException)), None)
            if error is not None:
                failed.append((outcome, error))
        return failed


def _finished(result_key: str, ttl_ms: int, reply: contract.Reply) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.eval(_UPDATE_RECORD, 1, result_key, ttl_ms, *contract.finished_record(reply))
    return add


def update_record(result_key: str, fields: Sequence[str | bytes]) -> Callable[[Any], None]:
    """A record's fields set while it exists, its TTL left as it is."""
    def add(pipe: Any) -> None:
        pipe.eval(_UPDATE_RECORD, 1, result_key, "", *fields)
    return add


def _eval(script: str, keys: list[Any], args: list[Any]) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.eval(script, len(keys), *keys, *args)
    return add
