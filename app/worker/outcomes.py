"""Writing outcomes: replies and acknowledgements of a whole round, and dead letters.

Replies of entries that finish together go out as one pipeline of XADDs per node,
then ONE XACK per request stream shard names every entry whose reply is in. The XACK is sent
only after the replies answered, so an entry is never acknowledged without its reply
(an XADD refused for memory or a wrong key type leaves its entry pending). The price
is a second round trip per batch, not per entry. An XACK that fails after its replies
were written leaves the entries pending: they are delivered again and answered twice,
never lost (the proxy drops the duplicate as a late reply). A node that is down fails
only the outcomes of its own shards (app.shared.routing): the others are written.

The reply stream's TTL rides in the same pipeline, but only when a stream is new to
this worker or its last refresh is a quarter of the TTL old (the owning proxy
refreshes it too), not with every reply.

With REDIS_WAIT_REPLICAS above 0 each node's pipeline of replies ends with one WAIT. The XACK
is not waited for: an acknowledgement lost in a failover makes a duplicate, not a loss.

An async request (it names a result record) has its outcome written into that record in
the same pipeline as its reply (or instead of one when nobody waits on a stream), before
the XACK, so it is never acknowledged without its result. The record is on the request's
shard, like its reply stream: one node, one pipeline. A record that is gone (expired) is
not created again.

Dead letters are rare and keep the one-script form: append and XACK atomically,
on keys of one slot (the request stream and its dead-letter stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.shared import contract
from app.shared.routing import NodeWriter, Routed

# Fill in a record only while it exists: a late write must not bring back an expired one.
_UPDATE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
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
    def __init__(self, replies: NodeWriter, acks: NodeWriter, group: str, dead_letter_maxlen: int) -> None:
        """``replies`` sends the replies and dead letters (with WAIT when asked), ``acks`` the
        XACKs (never waited for)."""
        self._replies = replies
        self._acks = acks
        self._group = group
        self._dead_letter_maxlen = dead_letter_maxlen
        self.ttl = ReplyTtl(contract.REPLY_STREAM_TTL_SECONDS / 4)

    def write(self, outcomes: Sequence[Outcome]) -> list[BaseException | None]:
        """Replies first, then one XACK per shard for the entries whose reply is in. Per
        outcome: None when replied (if it had a reply) and acknowledged, else its error.
        Each node's share is its own pipeline: a node that is down fails only its own."""
        errors: list[BaseException | None] = [None] * len(outcomes)
        replying = [index for index, outcome in enumerate(outcomes) if outcome.writes]
        if replying:
            for index, error in zip(replying, self._append_replies([outcomes[i] for i in replying]), strict=True):
                errors[index] = error
        acking: dict[str, list[int]] = {}
        for index, error in enumerate(errors):
            if error is None:
                acking.setdefault(outcomes[index].stream, []).append(index)
        if acking:
            items = [Routed(stream, _xack(stream, self._group, [outcomes[i].entry_id for i in indexes]))
                     for stream, indexes in acking.items()]
            for indexes, result in zip(acking.values(), self._acks.execute(items), strict=True):
                if isinstance(result, BaseException):
                    for index in indexes:
                        errors[index] = result
        return errors

    def _append_replies(self, outcomes: list[Outcome]) -> list[BaseException | None]:
        items, expiring = [], []
        for outcome in outcomes:
            assert outcome.reply is not None
            expire = False
            if outcome.reply_to is not None:
                expire = outcome.reply_to not in expiring and self.ttl.due(outcome.reply_to)
                if expire:
                    expiring.append(outcome.reply_to)
            items.append(Routed(outcome.reply_to or outcome.result_key, _reply(outcome, expire)))
        results = self._replies.execute(items)
        errors = [result if isinstance(result, BaseException) else None for result in results]
        self.ttl.refreshed([item.key for item, error in zip(items, errors, strict=True)
                            if error is None and item.key in expiring])
        return errors

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


def _reply(outcome: Outcome, expire: bool) -> Callable[[Any], None]:
    assert outcome.reply is not None
    reply_to, reply = outcome.reply_to, outcome.reply

    def add(pipe: Any) -> None:
        if reply_to is not None:
            pipe.xadd(reply_to, reply.to_fields(), maxlen=contract.REPLY_STREAM_MAXLEN, approximate=True)
            if expire:
                pipe.expire(reply_to, contract.REPLY_STREAM_TTL_SECONDS)
        if outcome.result_key:
            _finished(outcome.result_key, outcome.result_ttl_ms, reply)(pipe)
    return add


def _finished(result_key: str, ttl_ms: int, reply: contract.Reply) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.eval(_UPDATE_RECORD, 1, result_key, ttl_ms, *contract.finished_record(reply))
    return add


def update_record(result_key: str, fields: Sequence[str | bytes]) -> Callable[[Any], None]:
    """A record's fields set while it exists, its TTL left as it is."""
    def add(pipe: Any) -> None:
        pipe.eval(_UPDATE_RECORD, 1, result_key, "", *fields)
    return add


def _xack(stream: str, group: str, entry_ids: list[bytes]) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.xack(stream, group, *entry_ids)
    return add


def _eval(script: str, keys: list[Any], args: list[Any]) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.eval(script, len(keys), *keys, *args)
    return add
