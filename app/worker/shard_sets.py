"""Following the shard sets in use while REQUEST_STREAM_SHARDS changes (app.shared.shard_sets).

A worker reads its own shard count's streams always, and every set a proxy announced
too, so requests written by proxies on either side of a rolling change are answered.
A set it does not own is retired when no proxy has announced it for the retirement
window and its streams are drained: nothing undelivered, nothing pending, and no entry
newer than the window (a proxy that wrote without announcing). Every worker decides for
itself, so a lost registry key or a worker that missed the retirement cannot strand
entries: a set is only ever let go by a worker that saw it empty.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.shard_sets import RETIRE_AFTER_ANNOUNCEMENTS, ShardSetRegistry
from app.worker import metrics

log = logging.getLogger("app.worker")


class ShardSetFollower:
    def __init__(self, registry: ShardSetRegistry, client: RedisClient, configured_shards: int, *, group: str,
                 announce_seconds: float, read: Callable[[list[str]], None],
                 stop_reading: Callable[[list[str]], None], stopping: threading.Event) -> None:
        self._registry = registry
        self._redis = client
        self._configured = configured_shards
        self._group = group.encode()
        self._interval = min(5.0, announce_seconds)
        self.retire_after_ms = int(RETIRE_AFTER_ANNOUNCEMENTS * announce_seconds * 1000)
        self._read = read
        self._stop_reading = stop_reading
        self._stopping = stopping
        self.shard_sets = {configured_shards}
        metrics.SHARD_SETS_READ.labels(str(configured_shards)).set(1)

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.follow()
            except redis.RedisError as error:
                # What is read goes on being read; the next round looks again.
                log.debug("following the shard sets skipped", extra={"error": repr(error)})

    def follow(self) -> None:
        announced = self._registry.announced()
        for shards in sorted(announced.last_ms.keys() - self.shard_sets):
            self._read(self._registry.streams(shards))
            self.shard_sets.add(shards)
            metrics.SHARD_SETS_READ.labels(str(shards)).set(1)
            log.info("reading an announced shard set", extra={"shards": shards})
        for shards in sorted(self.shard_sets - {self._configured}):
            if not announced.stale(shards, self.retire_after_ms):
                continue
            streams = self._only_in(shards)
            lanes = [contract.prompt_lane(stream) for stream in streams]
            if self._drained([*streams, *lanes], newest_before_ms=announced.now_ms - self.retire_after_ms):
                self._retire(shards, streams, announced.now_ms - self.retire_after_ms)

    def _only_in(self, shards: int) -> list[str]:
        """The set's streams that no other set read here shares (counts can share a tag)."""
        others = {stream for other in self.shard_sets - {shards} for stream in self._registry.streams(other)}
        return [stream for stream in self._registry.streams(shards) if stream not in others]

    def _drained(self, streams: list[str], newest_before_ms: int) -> bool:
        for stream in streams:
            if not self._redis.exists(stream):
                continue
            info = self._redis.xinfo_stream(stream)
            last_id: bytes = info["last-generated-id"]
            if int(last_id.partition(b"-")[0]) > newest_before_ms:
                return False
            group = next((g for g in self._redis.xinfo_groups(stream) if g["name"] == self._group), None)
            if group is None:
                if info["length"]:
                    return False
                continue
            if group["pending"] or group["last-delivered-id"] != last_id:
                return False
        return True

    def _retire(self, shards: int, streams: list[str], announced_before_ms: int) -> None:
        self._stop_reading(streams)
        self.shard_sets.discard(shards)
        self._registry.forget(shards, announced_before_ms)
        metrics.SHARD_SETS_READ.remove(str(shards))
        metrics.SHARD_SETS_RETIRED.inc()
        log.info("shard set retired: no proxy announces it and its streams are drained",
                 extra={"shards": shards, "streams": streams})
