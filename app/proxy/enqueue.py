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
from collections.abc import Mapping, Sequence
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

# (stream, fields, MINID: entries older than any deadline are trimmed as this one is added)
Entry = tuple[str, dict[Any, Any], str]


class NoShardAvailable(redis.ConnectionError):
    """Every shard failed its last write and is paused; ``retry_after`` in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"no request stream shard can take an entry; next try in {retry_after:.1f} s")
        self.retry_after = retry_after


class Enqueuer:
    def __init__(self, writer: NodeWriter, guard: RedisGuard, shards: ShardHealth,
                 reply_streams: Mapping[str, str]) -> None:
        self._writer = writer
        self._guard = guard
        self._shards = shards
        self._reply_streams = reply_streams
        self._batcher: Batcher[Entry] = Batcher(self._send, "enqueue")
        self._next_probe = 0.0

    def enqueue(self, request: contract.WeatherRequest, minid: str, wait_seconds: float) -> str:
        """Returns the shard once the entry is in Redis; raises a Redis error (CircuitOpen,
        NoShardAvailable, a timeout, or the error of a write whose fate is unknown) otherwise."""
        wait = self._guard.retry_after()
        if wait > 0:
            self._probe_if_due()
            raise CircuitOpen(wait)
        deadline = time.monotonic() + wait_seconds
        try:
            stream = self._enqueue_on_a_shard(request, minid, deadline)
        except redis.RedisError as error:
            self._guard.record(error)
            raise
        self._guard.record(None)
        return stream

    def _probe_if_due(self) -> None:
        """While the breaker is open, every PROBE_INTERVAL_SECONDS a PING in the background
        asks Redis; its answer half-opens the breaker and the next request is the trial.
        Recovery is then noticed by the request path itself, not only by a reply reader
        that may sit in its blocking XREAD, and no refused request waits for the PING."""
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL_SECONDS
            threading.Thread(target=self._guard.probe, name="enqueue-probe", daemon=True).start()

    def _enqueue_on_a_shard(self, request: contract.WeatherRequest, minid: str, deadline: float) -> str:
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
            fields = dataclasses.replace(request, reply_to=self._reply_streams[stream]).to_fields()
            try:
                self._batcher.submit((stream, fields, minid), timeout=max(0.0, deadline - time.monotonic()))
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
            return stream

    def _send(self, batch: list[Entry]) -> Sequence[BaseException | None]:
        results = self._writer.execute([Routed(stream, _xadd(stream, fields, minid))
                                        for stream, fields, minid in batch])
        return [result if isinstance(result, BaseException) else None for result in results]


def _xadd(stream: str, fields: dict[Any, Any], minid: str) -> Any:
    def add(pipe: Any) -> None:
        pipe.xadd(stream, fields, minid=minid, approximate=True)
    return add
