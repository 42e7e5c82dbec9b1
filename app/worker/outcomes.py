"""Writing outcomes: replies and acknowledgements of a whole round, and dead letters.

Replies of entries that finish together go out as one pipeline of XADDs, then ONE
XACK per request stream shard names every entry whose reply is in. The XACK is sent
only after the replies answered, so an entry is never acknowledged without its reply
(an XADD refused for memory or a wrong key type leaves its entry pending). The price
is a second round trip per batch, not per entry. An XACK that fails after its replies
were written leaves the entries pending: they are delivered again and answered twice,
never lost (the proxy drops the duplicate as a late reply). Reply and ack are never
one script: a reply stream and a request stream live in different cluster slots.

The reply stream's TTL rides in the same pipeline, but only when a stream is new to
this worker or its last refresh is a quarter of the TTL old (the owning proxy
refreshes it too), not with every reply.

With REDIS_WAIT_REPLICAS above 0 the replies' pipeline ends with one WAIT. The XACK
is not waited for: an acknowledgement lost in a failover makes a duplicate, not a loss.

Dead letters are rare and keep the one-script form: append and XACK atomically,
on keys of one slot (the request stream and its dead-letter stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.replication import ReplicaWait

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
    def __init__(self, client: RedisClient, group: str, dead_letter_maxlen: int, replicas: ReplicaWait) -> None:
        self._client = client
        self._replicas = replicas
        self._group = group
        self._dead_letter_maxlen = dead_letter_maxlen
        self._dead_letter_script = client.register_script(_DEAD_LETTER_AND_ACK)
        self.ttl = ReplyTtl(contract.REPLY_STREAM_TTL_SECONDS / 4)

    def write(self, outcomes: Sequence[Outcome]) -> list[BaseException | None]:
        """Replies first, then one XACK for the entries whose reply is in. Per outcome:
        None when replied (if it had a reply) and acknowledged, else its error."""
        errors: list[BaseException | None] = [None] * len(outcomes)
        replying = [index for index, outcome in enumerate(outcomes) if outcome.reply is not None]
        if replying:
            for index, error in zip(replying, self._append_replies([outcomes[i] for i in replying]), strict=True):
                errors[index] = error
        acking: dict[str, list[int]] = {}
        for index, error in enumerate(errors):
            if error is None:
                acking.setdefault(outcomes[index].stream, []).append(index)
        if len(acking) == 1:
            (stream, indexes), = acking.items()
            self._acknowledge(stream, indexes, outcomes, errors)
        elif acking:
            self._acknowledge_shards(acking, outcomes, errors)
        return errors

    def _acknowledge(self, stream: str, indexes: list[int], outcomes: Sequence[Outcome],
                     errors: list[BaseException | None]) -> None:
        try:
            self._client.xack(stream, self._group, *(outcomes[i].entry_id for i in indexes))
        except redis.RedisError as error:
            for index in indexes:
                errors[index] = error

    def _acknowledge_shards(self, acking: dict[str, list[int]], outcomes: Sequence[Outcome],
                            errors: list[BaseException | None]) -> None:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for stream, indexes in acking.items():
                    pipe.xack(stream, self._group, *(outcomes[i].entry_id for i in indexes))
                results = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            results = [error] * len(acking)
        for indexes, result in zip(acking.values(), results, strict=True):
            if isinstance(result, BaseException):
                for index in indexes:
                    errors[index] = result

    def _append_replies(self, outcomes: list[Outcome]) -> list[BaseException | None]:
        positions, expiring = [], []
        with self._client.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                assert outcome.reply_to is not None and outcome.reply is not None
                positions.append(len(pipe))
                pipe.xadd(outcome.reply_to, outcome.reply.to_fields(),  # type: ignore[arg-type]
                          maxlen=contract.REPLY_STREAM_MAXLEN, approximate=True)
                if outcome.reply_to not in expiring and self.ttl.due(outcome.reply_to):
                    expiring.append(outcome.reply_to)
                    pipe.expire(outcome.reply_to, contract.REPLY_STREAM_TTL_SECONDS)
            self._replicas.add_to(pipe)
            results = pipe.execute(raise_on_error=False)
        self._replicas.check(results, self._client)
        self.ttl.refreshed(expiring)
        return [results[position] if isinstance(results[position], BaseException) else None
                for position in positions]

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
        # One slot: a shard's dead-letter stream carries the shard's hash tag.
        keys = [contract.dead_letter_stream(stream), stream]
        if not self._replicas.replicas:
            self._dead_letter_script(keys=keys, args=args)  # redis-py loads it again on NOSCRIPT
            return
        try:
            self._confirmed_dead_letter(keys, args)
        except NoScriptError:
            # A primary promoted in a failover starts with an empty script cache.
            self._client.script_load(_DEAD_LETTER_AND_ACK)
            self._confirmed_dead_letter(keys, args)

    def _confirmed_dead_letter(self, keys: list[Any], args: list[Any]) -> None:
        # WAIT confirms the writes of its own connection: it shares the script's pipeline.
        with self._client.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._dead_letter_script.sha, len(keys), *keys, *args)
            self._replicas.add_to(pipe)
            results = pipe.execute()
        self._replicas.check(results, self._client)
