"""Every few seconds: the queue metrics of every shard (what alerts and scaling read) and
the removal of consumers that are gone."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.resilience import RedisGuard
from app.shared.routing import NodeWriter, Routed
from app.worker import metrics
from app.worker.consumers import ConsumerJanitor

log = logging.getLogger("app.worker")

HOUSEKEEPING_INTERVAL_SECONDS = 5.0


class Housekeeping:
    def __init__(self, client: RedisClient, reads: NodeWriter, guard: RedisGuard, janitor: ConsumerJanitor,
                 streams: Callable[[], list[str]], *, group: str, consumer_expiry_seconds: float,
                 groups_ready: Callable[[], bool], stopping: threading.Event) -> None:
        self._redis = client
        self._reads = reads
        self._guard = guard
        self._janitor = janitor
        # The streams read right now: they change when a shard set is announced or retired.
        self._streams = streams
        self._labelled: set[str] = set()
        self._group = group
        self._expiry_ms = int(consumer_expiry_seconds * 1000)
        self._groups_ready = groups_ready
        self._stopping = stopping

    def run(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL_SECONDS if self._groups_ready() else 0.5):
            try:
                self._guard.call_from_loop(self.refresh_queue_metrics)
                removed = self._guard.call_from_loop(self.remove_gone_consumers)
            except redis.RedisError as error:
                metrics.REDIS_UP.set(0)
                log.debug("housekeeping skipped", extra={"error": repr(error)})
                continue
            metrics.REDIS_UP.set(1)
            if removed:
                metrics.CONSUMERS_REMOVED.inc(len(removed))
                log.info("removed gone consumers", extra={"consumers": removed})

    def remove_gone_consumers(self) -> list[str]:
        """Per shard; a shard whose node does not answer is left for the next round."""
        removed: list[str] = []
        errors: list[redis.RedisError] = []
        streams = self._streams()
        for stream in streams:
            try:
                removed += self._janitor.remove_gone(stream, self._expiry_ms)
            except redis.RedisError as error:
                errors.append(error)
        if errors and len(errors) == len(streams):
            raise errors[0]
        return removed

    def refresh_queue_metrics(self) -> None:
        """Lag, pending and lengths of every shard, and their sums. A shard whose node does
        not answer keeps its last figures; when none answers, the error is raised."""
        group = self._group.encode()
        streams = self._streams()
        for gone in self._labelled - set(streams):
            metrics.SHARD_LAG.remove(gone)
            metrics.SHARD_PENDING.remove(gone)
        self._labelled &= set(streams)
        items = [Routed(stream, _shard_figures(stream)) for stream in streams]
        results = self._reads.execute(items)
        if all(isinstance(result, BaseException) for result in results):
            raise results[0]
        lag_total = pending_total = length_total = dead_total = 0
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, BaseException):
                continue
            groups, stream_length, dead_letters = result
            length = stream_length if isinstance(stream_length, int) else 0
            info = next((item for item in groups if item.get("name") == group), None) \
                if isinstance(groups, list) else None
            if info is not None:
                pending = int(info.get("pending") or 0)
                # Redis reports no lag once entries were deleted in the undelivered
                # range; the stream length is then the safe upper bound.
                lag = int(info["lag"]) if info.get("lag") is not None else length
                metrics.SHARD_LAG.labels(stream).set(lag)
                metrics.SHARD_PENDING.labels(stream).set(pending)
                self._labelled.add(stream)
                lag_total += lag
                pending_total += pending
            length_total += length
            dead_total += dead_letters if isinstance(dead_letters, int) else 0
        metrics.GROUP_PENDING.set(pending_total)
        metrics.GROUP_LAG.set(lag_total)
        metrics.QUEUE_DEPTH.set(lag_total + pending_total)
        metrics.REQUEST_STREAM_LENGTH.set(length_total)
        metrics.DEAD_LETTER_LENGTH.set(dead_total)


def _shard_figures(stream: str) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
        pipe.xlen(contract.dead_letter_stream(stream))
    return add
