"""The proxy's XADDs: coalesced into one pipeline per node per round trip, each entry on a
shard that can take it.

Entries go to the shards in turn (app.proxy.shards skips those whose last write
failed), and name as their reply stream this process's stream of the same shard, so a
request and its reply live on one node. Concurrent callers share one round trip
(app.shared.batching); each node's share of a batch is its own pipeline
(app.shared.routing), so a node that is down fails only its own entries.

An entry that provably did not land (NotSent, or refused for memory: OOM) is sent again at
once on another shard.
One whose replicas did not confirm it (REDIS_WAIT_REPLICAS) is too, and so is one whose
fate is unknown (the connection broke or timed out after the write) when the shards span
nodes (a cluster): every request of this API is a read, so the worst a second copy does
is a second execution, whose late reply is dropped; a caller must not get a 503 for the
failure of one node of many. On one Redis every shard shares the node that failed, so
such a write is answered 503 at once rather than copied. (An Idempotency-Key request is
not sent here: app.proxy.once keeps it on its key's shard.)
Only when no shard takes it within REDIS_RETRY_MAX_TRIES failed writes (and the retry
budget) is a request refused, and only that counts against the process's circuit
breaker: one shard's failure does not refuse the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.exceptions import OutOfMemoryError

from app.proxy import metrics
from app.proxy.replicas import CHECK_SECONDS as REPLICA_CHECK_SECONDS
from app.proxy.shards import ShardHealth
from app.shared import contract
from app.shared.batching import Batcher, BatchTimeout
from app.shared.replication import ReplicasBehind
from app.shared.resilience import CircuitOpen, RedisGuard
from app.shared.routing import NodeWriter, NotSent, Routed

log = logging.getLogger("app.proxy")

PROBE_INTERVAL_SECONDS = 0.25
T = TypeVar("T")

# An async request's record, added in the same script as its entry: (key, TTL in ms, fields).
Record = tuple[str, int, list[str]]
# (stream, fields, MINID: entries older than any deadline are trimmed as this one is added, record)
Entry = tuple[str, dict[Any, Any], str, Record | None]

# The entry and its record in one step on the shard's slot: no record without its entry
# (a poll would wait on nothing), no async entry without its record (its result lost).
_XADD_WITH_RECORD = """
local pairs = tonumber(ARGV[3])
local id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', unpack(ARGV, 4 + pairs))
redis.call('HSET', KEYS[2], 'entry', id, unpack(ARGV, 4, 3 + pairs))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return id
"""


@dataclass(frozen=True, slots=True)
class KeptResult:
    """What an async request's record needs: whose it is, how long to keep it while queued
    (its deadline and the result's TTL after) and once done, and whether a caller also
    waits for the reply on this process's reply stream (Prefer: wait)."""

    subject: str
    record_ttl_ms: int
    result_ttl_ms: int
    wants_reply: bool


class NoShardAvailable(redis.ConnectionError):
    """No shard the entry may go to can take it: paused after failed writes, or (``replicas_short``)
    its primary has fewer replicas online than REDIS_WAIT_REPLICAS; ``retry_after`` in seconds."""

    def __init__(self, retry_after: float, replicas_short: bool = False) -> None:
        why = "has the replicas to confirm it" if replicas_short else "can take an entry"
        super().__init__(f"no request stream shard {why}; next try in {retry_after:.1f} s")
        self.retry_after = retry_after
        self.replicas_short = replicas_short


class Enqueuer:
    def __init__(self, writer: NodeWriter, guard: RedisGuard, shards: ShardHealth,
                 reply_streams: Mapping[str, str], *, resend_unknown: bool = False,
                 on_replicas_behind: Callable[[], None] = lambda: None) -> None:
        """``resend_unknown``: send a write of unknown fate again on another shard (the shards span
        nodes); ``on_replicas_behind``: told when a WAIT fell short (app.proxy.replicas checks the node)."""
        self._writer = writer
        self._resend_unknown = resend_unknown
        self._on_replicas_behind = on_replicas_behind
        self.guard = guard
        self.shards = shards
        self.reply_streams = reply_streams
        self._batcher: Batcher[Entry] = Batcher(self._send, "enqueue")
        self._next_probe = 0.0

    def enqueue(self, request: contract.WeatherRequest, minid: str, wait_seconds: float,
                kept: KeptResult | None = None, deep: frozenset[str] = frozenset(),
                prompt: bool = False) -> tuple[str, str]:
        """Returns the shard and, with ``kept``, the async id naming the record (its shard's
        tag in it) once the entry is in Redis; raises a Redis error (CircuitOpen,
        NoShardAvailable, a timeout, or the error of a write whose fate is unknown) otherwise.
        ``deep`` shards (over admission's limit) are skipped while another can take it;
        ``prompt`` entries go to the shard's prompt lane (read first by its workers)."""
        return self.guarded(lambda deadline: self._enqueue_on_a_shard(request, minid, deadline, kept, deep, prompt),
                            wait_seconds)

    def replicas_behind(self) -> None:
        """A WAIT fell short: is a replica gone, or only slow? Its primary says (app.proxy.replicas)."""
        self._on_replicas_behind()

    def guarded(self, write: Callable[[float], T], wait_seconds: float) -> T:
        """``write(deadline)`` inside the process's breaker: refused at once while it is open,
        its outcome counted."""
        wait = self.guard.retry_after()
        if wait > 0:
            self._probe_if_due()
            raise CircuitOpen(wait)
        try:
            result = write(time.monotonic() + wait_seconds)
        except NoShardAvailable as error:
            if not error.replicas_short:  # else Redis answered (ROLE): no failure to open the breaker on
                self.guard.record(error)
            raise
        except redis.RedisError as error:
            self.guard.record(error)
            raise
        self.guard.record(None)
        return result

    def _probe_if_due(self) -> None:
        """While the breaker is open, every PROBE_INTERVAL_SECONDS a PING in the background
        asks Redis; its answer half-opens the breaker and the next request is the trial.
        Recovery is then noticed by the request path itself, not only by a reply reader
        that may sit in its blocking XREAD, and no refused request waits for the PING."""
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL_SECONDS
            threading.Thread(target=self.guard.probe, name="enqueue-probe", daemon=True).start()

    def _enqueue_on_a_shard(self, request: contract.WeatherRequest, minid: str, deadline: float,
                            kept: KeptResult | None, deep: frozenset[str], prompt: bool) -> tuple[str, str]:
        # A failed write sends the entry to the next shard at once; when every shard is
        # paused (one Redis, or a whole cluster refusing), the request waits a backoff step
        # (REDIS_RETRY_BASE_SECONDS, doubling) and tries the shard whose pause ends first:
        # REDIS_RETRY_MAX_TRIES failed writes in all, within the budget.
        policy = self.guard.policy
        failures = 0
        while True:
            stream = (self.shards.pick(deep) if deep else None) or self.shards.pick()
            if stream is None:
                if self.shards.none_can_confirm:
                    raise NoShardAvailable(REPLICA_CHECK_SECONDS, replicas_short=True)
                step = policy.base_seconds * 2 ** max(0, failures - 1)
                if failures >= policy.max_tries or time.monotonic() + step >= deadline:
                    raise NoShardAvailable(self.shards.seconds_until_one_is_free())
                time.sleep(step)
                stream = self.shards.pick() or self.shards.soonest_free()
                if stream is None:
                    raise NoShardAvailable(REPLICA_CHECK_SECONDS, replicas_short=True)
            async_id, record = "", None
            reply_to = self.reply_streams[stream]
            if kept is not None:
                # A new id on each shard tried: the id names the shard its record is on.
                async_id = contract.new_async_id(stream)
                key = contract.result_key(async_id) or ""
                record = (key, kept.record_ttl_ms, contract.accepted_record(kept.subject, contract.now_ms()))
                request = dataclasses.replace(request, result_key=key, result_ttl_ms=kept.result_ttl_ms)
                reply_to = reply_to if kept.wants_reply else ""
            fields = dataclasses.replace(request, reply_to=reply_to).to_fields()
            try:
                key = contract.prompt_lane(stream) if prompt else stream
                self._batcher.submit((key, fields, minid, record), timeout=max(0.0, deadline - time.monotonic()))
            except BatchTimeout:
                self.shards.failed(stream)
                raise redis.TimeoutError("enqueue took longer than its budget") from None
            except (NotSent, ReplicasBehind, OutOfMemoryError) as error:
                # OOM: Redis (noeviction, at maxmemory) refused the write before running it: a
                # refusal, nothing written, not a write of unknown fate.
                failures += 1
                self.shards.failed(stream)
                if isinstance(error, ReplicasBehind):
                    self.replicas_behind()
                metrics.ENQUEUE_REROUTED.inc()
                log.debug("shard paused; entry sent again on another", extra={"stream": stream, "error": repr(error)})
                continue
            except redis.RedisError as error:
                self.shards.failed(stream)
                metrics.ENQUEUE_FATE_UNKNOWN.inc()
                if not self._resend_unknown:
                    log.debug("shard paused", extra={"stream": stream, "error": repr(error)})
                    raise
                # Perhaps written, perhaps not: sent again all the same (a read done twice at worst).
                failures += 1
                metrics.ENQUEUE_REROUTED.inc()
                log.info("write of unknown fate; shard paused, entry sent again on another",
                         extra={"stream": stream, "error": repr(error)})
                continue
            self.shards.succeeded(stream)
            return stream, async_id

    def _send(self, batch: list[Entry]) -> Sequence[BaseException | None]:
        results = self._writer.execute([Routed(stream, _xadd(stream, fields, minid) if record is None
                                               else _xadd_with_record(stream, fields, minid, record))
                                        for stream, fields, minid, record in batch])
        return [result if isinstance(result, BaseException) else None for result in results]


def _xadd(stream: str, fields: dict[Any, Any], minid: str) -> Any:
    def add(pipe: Any) -> None:
        pipe.xadd(stream, fields, minid=minid, approximate=True)
    return add


def _xadd_with_record(stream: str, fields: dict[Any, Any], minid: str, record: Record) -> Any:
    key, ttl_ms, record_fields = record
    args: list[Any] = [minid, ttl_ms, len(record_fields), *record_fields]
    for name, value in fields.items():
        args += (name, value)

    def add(pipe: Any) -> None:
        pipe.eval(_XADD_WITH_RECORD, 2, stream, key, *args)
    return add

