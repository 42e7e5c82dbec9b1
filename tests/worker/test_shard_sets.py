"""A worker follows the shard sets proxies announce and retires one only once it is drained."""

from __future__ import annotations

import threading
import time

from app.shared.shard_sets import ShardSetRegistry
from app.worker.shard_sets import ShardSetFollower

GROUP = "workers"


class Reading:
    """What the follower told the worker to read: the streams themselves, on a real Redis."""

    def __init__(self, streams: list[str]) -> None:
        self.streams = set(streams)

    def read(self, streams: list[str]) -> None:
        self.streams |= set(streams)

    def stop_reading(self, streams: list[str]) -> None:
        self.streams -= set(streams)


def following(client, configured: int, announced: int, announce_seconds: float = 0.1,
              ) -> tuple[ShardSetRegistry, Reading, ShardSetFollower]:
    """A worker on ``configured`` shards reading their streams, and a proxy on ``announced``."""
    registry = ShardSetRegistry(client, "requests", hash_tagged=False)
    reading = Reading(registry.streams(configured))
    follower = ShardSetFollower(registry, client, configured, group=GROUP, announce_seconds=announce_seconds,
                                read=reading.read, stop_reading=reading.stop_reading, stopping=threading.Event())
    registry.announce(announced)
    return registry, reading, follower


def _enqueue(client, stream: str) -> bytes:
    if not client.exists(stream):
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    return client.xadd(stream, {"v": "1"})


def test_a_worker_reads_every_announced_set_and_retires_a_drained_one(redis_server):
    client = redis_server.client()
    registry, reading, follower = following(client, 6, announced=3)

    follower.follow()
    assert reading.streams == set(registry.streams(6)) | set(registry.streams(3))
    assert follower.shard_sets == {3, 6}

    old = registry.streams(3)[0]
    entry = _enqueue(client, old)
    time.sleep(follower.retire_after_ms / 1000 + 0.1)  # no proxy announces 3 any more
    follower.follow()
    assert follower.shard_sets == {3, 6}, "an undelivered entry keeps the set read"

    client.xreadgroup(GROUP, "w", {old: ">"})
    follower.follow()
    assert follower.shard_sets == {3, 6}, "a pending entry keeps the set read"

    client.xack(old, GROUP, entry)
    follower.follow()
    assert follower.shard_sets == {6}
    assert reading.streams == set(registry.streams(6)), "streams 3 shares with 6 are read on"
    assert 3 not in registry.announced().last_ms


def test_a_set_with_an_entry_newer_than_the_window_is_kept(redis_server):
    """A proxy that wrote without announcing (its registry node unreachable) still has readers."""
    client = redis_server.client()
    registry, _, follower = following(client, 6, announced=3, announce_seconds=0.5)
    follower.follow()
    time.sleep(follower.retire_after_ms / 1000 + 0.1)

    old = registry.streams(3)[1]
    entry = _enqueue(client, old)
    client.xreadgroup(GROUP, "w", {old: ">"})
    client.xack(old, GROUP, entry)
    follower.follow()
    assert follower.shard_sets == {3, 6}

    time.sleep(follower.retire_after_ms / 1000 + 0.1)
    follower.follow()
    assert follower.shard_sets == {6}


def test_a_worker_never_retires_its_own_set_and_reads_a_retired_set_again_when_announced(redis_server):
    client = redis_server.client()
    registry, reading, follower = following(client, 3, announced=6)
    follower.follow()
    time.sleep(follower.retire_after_ms / 1000 + 0.1)

    follower.follow()
    assert follower.shard_sets == {3}, "6 is drained and unannounced; 3 is this worker's own"

    registry.announce(6)  # a proxy on 6 again (a rollback of the rollback)
    follower.follow()
    assert follower.shard_sets == {3, 6}
    assert set(registry.streams(6)) <= reading.streams
