"""The proxy's XADDs: coalesced into one pipeline per node per round trip, each entry on a
shard that can take it.

Entries go to the shards in turn (app.proxy.shards skips those whose last write
failed), and name as their reply stream this process's stream of the same shard, so a
request and its reply live on one node. Concurrent callers share one round trip
(app.shared.batching); each node's share of a batch is its own pipeline
(app.shared.routing), so a node that is down fails only its own entries.

An entry that provably did not land (NotSent) is sent again at once on another shard.
One whose replicas did not confirm it (REDIS_WAIT_REPLICAS) is too: it may then be
processed twice, never lost. One whose fate is unknown (the connection broke after the
write) is not sent again: its caller gets a 503 and the shard is paused. Only when no
shard takes it within REDIS_RETRY_MAX_TRIES failed writes (and the retry budget) is a
request refused, and only that counts
against the process's circuit breaker: one shard's failure does not refuse the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.proxy import metrics
from app.proxy.shards import ShardHealth
from app.shared import contract
from app.shared.batching import Batcher, BatchTimeout
from app.shared.replication import ReplicasBehind
from app.shared.resilience import CircuitOpen, RedisGuard
from app.shared.routing import NodeWriter, NotSent, Routed

log = logging.getLogger("app.proxy")

PROBE_INTERVAL_SECONDS = 0.25

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


# An idempotent request: its key's record, its entry and its result record in one step on
# the key's shard. A key already there (and not the one being replaced) returns what it
# names instead: the request it was first sent with.
_XADD_ONCE = """
local existing = redis.call('HMGET', KEYS[3], 'id', 'body')
if existing[1] and existing[1] ~= ARGV[5] then
  return {0, existing[1], existing[2]}
end
local pairs = tonumber(ARGV[7])
local id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', unpack(ARGV, 8 + pairs))
redis.call('HSET', KEYS[2], 'entry', id, unpack(ARGV, 8, 7 + pairs))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'id', ARGV[6], 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {1, ARGV[6], ARGV[4]}
"""


@dataclass(frozen=True, slots=True)
class OnceOnly:
    """An Idempotency-Key as the enqueuer uses it: which shard (by the key's hash, so every
    proxy finds it), the key's fingerprint and its body's, how long it is kept, and the id
    of an earlier try it may replace (one whose deadline passed before any worker took it)."""

    fingerprint: str
    body_hash: str
    ttl_ms: int
    replaces: str = ""


@dataclass(frozen=True, slots=True)
class Placed:
    stream: str
    async_id: str
    # False: the key was there already; async_id and body_hash are those of the first request.
    created: bool = True
    body_hash: str = ""


class NoShardAvailable(redis.ConnectionError):
    """Every shard failed its last write and is paused; ``retry_after`` in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"no request stream shard can take an entry; next try in {retry_after:.1f} s")
        self.retry_after = retry_after


class Enqueuer:
    def __init__(self, writer: NodeWriter, guard: RedisGuard, shards: ShardHealth,
                 reply_streams: Mapping[str, str],
                 other_shard_sets: Callable[[], Sequence[list[str]]] = lambda: ()) -> None:
        """``other_shard_sets``: the request streams of the other shard counts in use (during
        a change of REQUEST_STREAM_SHARDS), where an Idempotency-Key may have been written."""
        self._writer = writer
        self._guard = guard
        self._shards = shards
        self._reply_streams = reply_streams
        self._other_shard_sets = other_shard_sets
        self._batcher: Batcher[Entry] = Batcher(self._send, "enqueue")
        self._next_probe = 0.0

    def enqueue(self, request: contract.WeatherRequest, minid: str, wait_seconds: float,
                kept: KeptResult | None = None) -> tuple[str, str]:
        """Returns the shard and, with ``kept``, the async id naming the record (its shard's
        tag in it) once the entry is in Redis; raises a Redis error (CircuitOpen,
        NoShardAvailable, a timeout, or the error of a write whose fate is unknown) otherwise."""
        wait = self._guard.retry_after()
        if wait > 0:
            self._probe_if_due()
            raise CircuitOpen(wait)
        deadline = time.monotonic() + wait_seconds
        try:
            placed = self._enqueue_on_a_shard(request, minid, deadline, kept)
        except redis.RedisError as error:
            self._guard.record(error)
            raise
        self._guard.record(None)
        return placed

    def enqueue_once(self, request: contract.WeatherRequest, minid: str, wait_seconds: float, kept: KeptResult,
                     once: OnceOnly) -> Placed:
        """Like ``enqueue``, on the shard the key maps to and only if the key is new; no other
        shard is tried (the key would not be found there)."""
        wait = self._guard.retry_after()
        if wait > 0:
            self._probe_if_due()
            raise CircuitOpen(wait)
        deadline = time.monotonic() + wait_seconds
        try:
            placed = self._enqueue_on_the_keys_shard(request, minid, deadline, kept, once)
        except redis.RedisError as error:
            self._guard.record(error)
            raise
        self._guard.record(None)
        return placed

    def _enqueue_on_the_keys_shard(self, request: contract.WeatherRequest, minid: str, deadline: float,
                                   kept: KeptResult, once: OnceOnly) -> Placed:
        earlier = self._written_under_another_count(once)
        if earlier is not None:
            return earlier
        stream = _keys_shard(list(self._reply_streams), once.fingerprint)
        async_id = contract.new_async_id(stream)
        key = contract.result_key(async_id) or ""
        request = dataclasses.replace(request, result_key=key, result_ttl_ms=kept.result_ttl_ms,
                                      reply_to=self._reply_streams[stream] if kept.wants_reply else "")
        record = contract.accepted_record(kept.subject, contract.now_ms())
        args: list[Any] = [minid, kept.record_ttl_ms, once.ttl_ms, once.body_hash, once.replaces, async_id,
                           len(record), *record]
        for name, value in request.to_fields().items():
            args += (name, value)
        keys = [stream, key, contract.idempotency_key(stream, once.fingerprint)]

        def add(pipe: Any) -> None:
            pipe.eval(_XADD_ONCE, len(keys), *keys, *args)

        policy = self._guard.policy
        for attempt in range(policy.max_tries):
            result, = self._writer.execute([Routed(stream, add)])
            if not isinstance(result, BaseException):
                created, first_id, body_hash = result[0]
                # A retry of a write that landed short of replicas finds its own id.
                return Placed(stream, first_id.decode(), bool(created) or first_id.decode() == async_id,
                              body_hash.decode())
            if isinstance(result, ReplicasBehind):
                # On the primary, short of replicas: the key is there; asked again, it names this try.
                continue
            if not isinstance(result, NotSent):
                raise result
            step = policy.base_seconds * 2 ** attempt
            if time.monotonic() + step >= deadline:
                break
            time.sleep(step)
        raise NoShardAvailable(policy.base_seconds)

    def _written_under_another_count(self, once: OnceOnly) -> Placed | None:
        """The key as proxies of another shard count wrote it, while the count changes: a
        read before the write, so only two first requests racing across counts can both run."""
        items = []
        for streams in self._other_shard_sets():
            stream = _keys_shard(streams, once.fingerprint)
            key = contract.idempotency_key(stream, once.fingerprint)
            items.append(Routed(key, _hmget(key)))
        for result in self._writer.execute(items) if items else []:
            if isinstance(result, BaseException):
                raise result
            first_id, body_hash = result[0]
            if first_id is not None and first_id.decode() != once.replaces:
                return Placed("", first_id.decode(), False, body_hash.decode())
        return None

    def _probe_if_due(self) -> None:
        """While the breaker is open, every PROBE_INTERVAL_SECONDS a PING in the background
        asks Redis; its answer half-opens the breaker and the next request is the trial.
        Recovery is then noticed by the request path itself, not only by a reply reader
        that may sit in its blocking XREAD, and no refused request waits for the PING."""
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL_SECONDS
            threading.Thread(target=self._guard.probe, name="enqueue-probe", daemon=True).start()

    def _enqueue_on_a_shard(self, request: contract.WeatherRequest, minid: str, deadline: float,
                            kept: KeptResult | None) -> tuple[str, str]:
        # A failed write sends the entry to the next shard at once; when every shard is
        # paused (one Redis, or a whole cluster refusing), the request waits a backoff step
        # (REDIS_RETRY_BASE_SECONDS, doubling) and tries the shard whose pause ends first:
        # REDIS_RETRY_MAX_TRIES failed writes in all, within the budget.
        policy = self._guard.policy
        failures = 0
        while True:
            stream = self._shards.pick()
            if stream is None:
                step = policy.base_seconds * 2 ** max(0, failures - 1)
                if failures >= policy.max_tries or time.monotonic() + step >= deadline:
                    raise NoShardAvailable(self._shards.seconds_until_one_is_free())
                time.sleep(step)
                stream = self._shards.pick() or self._shards.soonest_free()
            async_id, record = "", None
            reply_to = self._reply_streams[stream]
            if kept is not None:
                # A new id on each shard tried: the id names the shard its record is on.
                async_id = contract.new_async_id(stream)
                key = contract.result_key(async_id) or ""
                record = (key, kept.record_ttl_ms, contract.accepted_record(kept.subject, contract.now_ms()))
                request = dataclasses.replace(request, result_key=key, result_ttl_ms=kept.result_ttl_ms)
                reply_to = reply_to if kept.wants_reply else ""
            fields = dataclasses.replace(request, reply_to=reply_to).to_fields()
            try:
                self._batcher.submit((stream, fields, minid, record), timeout=max(0.0, deadline - time.monotonic()))
            except BatchTimeout:
                self._shards.failed(stream)
                raise redis.TimeoutError("enqueue took longer than its budget") from None
            except (NotSent, ReplicasBehind) as error:
                failures += 1
                self._shards.failed(stream)
                metrics.ENQUEUE_REROUTED.inc()
                log.debug("shard paused; entry sent again on another", extra={"stream": stream, "error": repr(error)})
                continue
            except redis.RedisError as error:
                self._shards.failed(stream)
                log.debug("shard paused", extra={"stream": stream, "error": repr(error)})
                raise
            self._shards.succeeded(stream)
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


def _keys_shard(streams: list[str], fingerprint: str) -> str:
    return streams[int(fingerprint[:8], 16) % len(streams)]


def _hmget(key: str) -> Any:
    def add(pipe: Any) -> None:
        pipe.hmget(key, "id", "body")
    return add
