"""Writing outcomes: replies and acknowledgements of a whole round, and dead letters.

A terminal hands its entry's outcome to ``OutcomeWriter.send`` and is free once it is in
Redis: outcomes of terminals that finish together share one round trip
(app.shared.batching), inside the process's circuit breaker, and a reply that Redis could
not take yet is tried again while its caller still waits.

Outcomes of entries that finish together go out as ONE script call per shard (EVALSHA, on
the shard's slot: its reply streams and result records carry its hash tag): each reply's
XADD, then one XACK naming every entry whose reply (or result record) went in. One round
trip per batch, and an entry is never acknowledged without its reply: a reply refused
(memory, a wrong key type) leaves only its own entry pending, to be delivered again. A
node that is down fails only the outcomes of its own shards (app.shared.routing).

The reply stream's TTL rides in the same call, but only when a stream is new to this
worker or its last refresh is a quarter of the TTL old (the owning proxy refreshes it
too), not with every reply.

With REDIS_WAIT_REPLICAS above 0 each node's pipeline ends with one WAIT. A shortfall is
reported (weather_worker_replies_unconfirmed_total) and not retried: a script replicates as
one unit, so a reply and its acknowledgement are lost together or kept together. Lost in
a failover, the entry is pending again on the new primary and answered again; retrying
here would only hold a terminal while its caller waits.

An async request (it names a result record) has its outcome written into that record in
the same call as its reply (or instead of one when nobody waits on a stream), before the
XACK. A record that is gone (expired) is not created again.

Dead letters are rare and keep their own script: append and XACK atomically, on keys of
one slot (the request stream and its dead-letter stream).
"""

from __future__ import annotations

import hashlib
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
_UPDATE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: the request streams acknowledged in, then the reply streams and records written.
# ARGV: group, reply MAXLEN, reply TTL (s), then per outcome: its stream's key index, its entry
# id, its reply stream's key index (0: none), 1 to set that stream's TTL, its record's key
# index (0: none), the record's TTL (ms), the counts of reply and record fields, the fields.
# Returns the failed outcomes: their number (from 1) and error, flat.
_REPLY_AND_ACK = """
local group, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
local acks, failed = {}, {}
local at, outcome = 4, 0
while at <= #ARGV do
  outcome = outcome + 1
  local stream, reply, record = tonumber(ARGV[at]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 4])
  local reply_fields, record_fields = tonumber(ARGV[at + 6]), tonumber(ARGV[at + 7])
  local first = at + 8
  local last = first + reply_fields - 1
  local err
  if reply > 0 then
    local added = redis.pcall('XADD', KEYS[reply], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, first, last))
    if type(added) == 'table' and added.err then err = added.err
    elseif ARGV[at + 3] == '1' then redis.call('EXPIRE', KEYS[reply], ttl) end
  end
  if not err and record > 0 and redis.call('EXISTS', KEYS[record]) == 1 then
    local set = redis.pcall('HSET', KEYS[record], unpack(ARGV, last + 1, last + record_fields))
    if type(set) == 'table' and set.err then err = set.err else redis.call('PEXPIRE', KEYS[record], ARGV[at + 5]) end
  end
  if err then
    failed[#failed + 1] = outcome
    failed[#failed + 1] = err
  else
    acks[stream] = acks[stream] or {}
    table.insert(acks[stream], ARGV[at + 1])
  end
  at = first + reply_fields + record_fields
end
for stream, ids in pairs(acks) do redis.call('XACK', KEYS[stream], group, unpack(ids)) end
return failed
"""
# Redis names a script by its SHA-1 (EVALSHA): an identifier, not a security measure.
_REPLY_AND_ACK_SHA = hashlib.sha1(_REPLY_AND_ACK.encode(), usedforsecurity=False).hexdigest()

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
    def __init__(self, replies: NodeWriter, acks: NodeWriter, guard: RedisGuard, *, group: str,
                 dead_letter_maxlen: int, reconnect_max_seconds: float, hash_tagged: bool = False) -> None:
        """``replies`` sends the outcomes and dead letters (with WAIT when asked), ``acks`` the
        outcomes without a reply and the marks of work started (never waited for).
        ``hash_tagged``: keys of one script call must share a slot (a cluster)."""
        self._replies = replies
        self._acks = acks
        self._guard = guard
        self._group = group
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
        calls: dict[object, _Call] = {}
        for index, outcome in enumerate(outcomes):
            calls.setdefault(self._call_of(index, outcome), _Call()).add(index, outcome, self.ttl)
        errors: list[BaseException | None] = [None] * len(outcomes)
        for writer, sending in ((self._replies, [c for c in calls.values() if c.writes]),
                                (self._acks, [c for c in calls.values() if not c.writes])):
            if not sending:
                continue
            results = writer.execute([call.routed(self._group, _REPLY_AND_ACK_SHA) for call in sending])
            unknown = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
            if unknown:
                # A Redis that restarted or a primary promoted in a failover starts with no scripts.
                retried = writer.execute([sending[i].routed(self._group, None) for i in unknown])
                for i, result in zip(unknown, retried, strict=True):
                    results[i] = result
            for call, result in zip(sending, results, strict=True):
                for index, error in call.errors(result).items():
                    errors[index] = error
                self.ttl.refreshed([key for key, index in call.expiring.items() if errors[index] is None])
        return errors

    def _call_of(self, index: int, outcome: Outcome) -> object:
        """Which script call an outcome goes in: one per node's slot of a shard in a cluster
        (its shard's hash tag), one in all on a single Redis. An entry naming a key of another
        slot (no proxy writes one) gets a call of its own, which fails alone."""
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


class _Call:
    """One script call: the outcomes of one shard (one slot), and how its answer maps back."""

    __slots__ = ("args", "expiring", "indexes", "keys", "writes")

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}  # each key's index in KEYS, from 1
        self.args: list[Any] = []
        self.indexes: list[int] = []  # the outcomes' places in the batch
        self.expiring: dict[str, int] = {}  # reply streams whose TTL is set, by the outcome that does it
        self.writes = False

    def _key(self, key: str) -> int:
        return self.keys.setdefault(key, len(self.keys) + 1)

    def add(self, index: int, outcome: Outcome, ttl: ReplyTtl) -> None:
        self.indexes.append(index)
        reply_key = record_key = expire = 0
        reply_fields: list[Any] = []
        record_fields: list[Any] = []
        stream_key = self._key(outcome.stream)
        if outcome.reply is not None:
            if outcome.reply_to is not None:
                reply_key = self._key(outcome.reply_to)
                for name, value in outcome.reply.to_fields().items():
                    reply_fields += (name, value)
                if outcome.reply_to not in self.expiring and ttl.due(outcome.reply_to):
                    self.expiring[outcome.reply_to] = index
                    expire = 1
            if outcome.result_key:
                record_key = self._key(outcome.result_key)
                record_fields = contract.finished_record(outcome.reply)
            self.writes = self.writes or bool(reply_key or record_key)
        self.args += (stream_key, outcome.entry_id, reply_key, expire, record_key, outcome.result_ttl_ms,
                      len(reply_fields), len(record_fields), *reply_fields, *record_fields)

    def routed(self, group: str, sha: str | None) -> Routed:
        """EVALSHA by ``sha``, or EVAL (which loads the script) without one."""
        keys = list(self.keys)
        args = [group, contract.REPLY_STREAM_MAXLEN, contract.REPLY_STREAM_TTL_SECONDS, *self.args]

        def add(pipe: Any) -> None:
            if sha is None:
                pipe.eval(_REPLY_AND_ACK, len(keys), *keys, *args)
            else:
                pipe.evalsha(sha, len(keys), *keys, *args)
        return Routed(keys[0], add)

    def errors(self, result: Any) -> dict[int, BaseException | None]:
        """Each outcome's error from the call's answer (a list: the script's, or the call's error)."""
        if isinstance(result, ReplicasBehind):
            # Written and acknowledged on the primary, as one unit: see the module's doc.
            metrics.REPLIES_UNCONFIRMED.inc(len(self.indexes))
            log.info("outcomes not confirmed by the replicas asked for; not written again",
                     extra={"error": str(result), "outcomes": len(self.indexes)})
            return dict.fromkeys(self.indexes)
        if isinstance(result, BaseException):
            return dict.fromkeys(self.indexes, result)
        failed = result[0]
        errors: dict[int, BaseException | None] = dict.fromkeys(self.indexes)
        for number, message in zip(failed[::2], failed[1::2], strict=True):
            text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
            errors[self.indexes[int(number) - 1]] = redis.ResponseError(text)
        return errors


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
