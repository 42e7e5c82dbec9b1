"""Coalesces the XADDs of one proxy process into pipelines.

Under load many greenlets enqueue at once; one greenlet sends whatever has queued up
as a single pipeline, so N requests cost one round trip and one pool checkout instead
of N. With one request in flight the batch is just that request, so nothing waits.

With REDIS_WAIT_REPLICAS above 0 the pipeline ends with one WAIT: the whole batch is
acknowledged by the replicas in one round trip, or the try fails and is retried. A
retry queues the entries again (they may already be on the primary), so a request
can be processed twice; it cannot be lost once its caller is told it was accepted.
"""

from __future__ import annotations

from typing import Any

import gevent
import redis
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue

from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard

MAX_BATCH = 256


class Enqueuer:
    def __init__(self, client: redis.Redis, guard: RedisGuard, stream: str, replicas: ReplicaWait) -> None:
        self._client = client
        self._guard = guard
        self._stream = stream
        self._replicas = replicas
        self._queue: Queue = Queue()
        self._greenlet = gevent.spawn(self._run)

    def enqueue(self, fields: dict[Any, Any], minid: str, wait_seconds: float) -> None:
        """Returns once the entry is in Redis; raises the Redis error (or a timeout) otherwise."""
        done = AsyncResult()
        self._queue.put((fields, minid, done))
        try:
            done.get(timeout=wait_seconds)
        except gevent.Timeout:
            raise redis.TimeoutError("enqueue took longer than its budget") from None

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except Empty:
                    break
            try:
                self._guard.call(self._send, batch)
            except Exception as error:  # every waiter of the batch gets the error
                for _, _, done in batch:
                    done.set_exception(error)
            else:
                for _, _, done in batch:
                    done.set(None)

    def _send(self, batch: list[tuple[dict[Any, Any], str, AsyncResult]]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for fields, minid, _ in batch:
                pipe.xadd(self._stream, fields, minid=minid, approximate=True)
            self._replicas.add_to(pipe)
            results = pipe.execute()
        self._replicas.check(results, self._client)
