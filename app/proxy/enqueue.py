"""The proxy's XADDs, coalesced into one pipeline per round trip (app/shared/batching.py).

Each request goes to the next request stream shard in turn (round robin per
process), so the shards fill evenly; in a cluster the pipeline is split per node.

With REDIS_WAIT_REPLICAS above 0 the pipeline ends with one WAIT: the whole batch is
acknowledged by the replicas in one round trip, or the try fails and is retried. A
retry queues the entries again (they may already be on the primary), so a request
can be processed twice; it cannot be lost once its caller is told it was accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle
from typing import Any

import redis

from app.shared.batching import Batcher, BatchTimeout
from app.shared.connections import RedisClient
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard

# (stream, fields, MINID: entries older than any deadline are trimmed as this one is added)
Entry = tuple[str, dict[Any, Any], str]


class Enqueuer:
    def __init__(self, client: RedisClient, guard: RedisGuard, streams: Sequence[str], replicas: ReplicaWait) -> None:
        self._client = client
        self._guard = guard
        self._next_stream = cycle(streams).__next__
        self._replicas = replicas
        self._batcher: Batcher[Entry] = Batcher(self._send, "enqueue")

    def enqueue(self, fields: dict[Any, Any], minid: str, wait_seconds: float) -> None:
        """Returns once the entry is in Redis; raises the Redis error (or a timeout) otherwise."""
        try:
            self._batcher.submit((self._next_stream(), fields, minid), timeout=wait_seconds)
        except BatchTimeout:
            raise redis.TimeoutError("enqueue took longer than its budget") from None

    def _send(self, batch: list[Entry]) -> Sequence[BaseException | None]:
        self._guard.call(self._pipeline, batch)
        return [None] * len(batch)

    def _pipeline(self, batch: list[Entry]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for stream, fields, minid in batch:
                pipe.xadd(stream, fields, minid=minid, approximate=True)
            self._replicas.add_to(pipe)
            results = pipe.execute()
        self._replicas.check(results, self._client)
