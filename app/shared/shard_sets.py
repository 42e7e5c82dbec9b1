"""Which request stream shard sets are in use, so REQUEST_STREAM_SHARDS can change while
the system runs.

A change of the shard count renames the request streams (each count has its own hash
tags). Proxies announce the count they write, every SHARD_SET_ANNOUNCE_SECONDS, in one
sorted set; workers read the streams of their own count and of every announced one, so
proxies and workers can be rolled in any order. A set no proxy has announced for
``RETIRE_AFTER_ANNOUNCEMENTS`` intervals, and whose streams hold nothing undelivered or
pending, is retired by the worker that finds it so (app.worker.shard_sets).

The announcement time is the registry key's own Redis clock (a script reads TIME), so
hosts' clocks never have to agree with each other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.loops import Loops

log = logging.getLogger("app.shard_sets")

# A proxy that missed this many announcements in a row is taken to be gone (or moved on).
RETIRE_AFTER_ANNOUNCEMENTS = 3

_ANNOUNCE = """
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
return 1
"""

_ANNOUNCED = """
local now = redis.call('TIME')
return {now[1] * 1000 + math.floor(now[2] / 1000), redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""

# Removed only if no announcement came since the caller decided the set was stale.
_FORGET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class Announced:
    """The registry as read at one instant of its Redis's clock."""

    now_ms: int
    # Shard count -> when a proxy last announced it (ms).
    last_ms: dict[int, int]

    def stale(self, shards: int, retire_after_ms: int) -> bool:
        last = self.last_ms.get(shards)
        return last is None or self.now_ms - last > retire_after_ms


class ShardSetRegistry:
    def __init__(self, client: RedisClient, request_stream: str, hash_tagged: bool) -> None:
        self._redis = client
        self._request_stream = request_stream
        self._hash_tagged = hash_tagged
        self.key = contract.shard_sets_key(request_stream)

    def streams(self, shards: int) -> list[str]:
        return contract.request_streams(self._request_stream, shards, self._hash_tagged)

    def announce(self, shards: int) -> None:
        self._redis.eval(_ANNOUNCE, 1, self.key, shards)

    def announced(self) -> Announced:
        # Read only: a monitor's user that may not write runs it too.
        result: Any = self._redis.eval_ro(_ANNOUNCED, 1, self.key)
        now_ms, flat = result
        members = {int(flat[i]): int(float(flat[i + 1])) for i in range(0, len(flat), 2)}
        return Announced(int(now_ms), members)

    def forget(self, shards: int, announced_before_ms: int) -> bool:
        return bool(self._redis.eval(_FORGET, 1, self.key, shards, announced_before_ms))


class Announcer:
    """A proxy process's announcement of the shard count it writes: at start, then every
    interval while it runs. (A write that beats the first announcement is safe: a set is
    retired only once its newest entry is older than the retirement window too.)"""

    def __init__(self, registry: ShardSetRegistry, shards: int, interval_seconds: float) -> None:
        self._registry = registry
        self._shards = shards
        self._interval = interval_seconds
        self._stopped = threading.Event()
        self.last_error: BaseException | None = None
        self._others: tuple[int, ...] = ()

    def other_counts(self) -> tuple[int, ...]:
        """The shard counts other proxies announced lately (as of the last announcement):
        where keys written under another count are (an Idempotency-Key during a change)."""
        return self._others

    def announce_once(self) -> bool:
        try:
            self._registry.announce(self._shards)
        except redis.RedisError as error:
            # Workers go on reading every set they read; a missed announcement only
            # matters after RETIRE_AFTER_ANNOUNCEMENTS of them in a row.
            if self.last_error is None:
                log.warning("announcing the shard set failed", extra={"error": repr(error)})
            self.last_error = error
            return False
        if self.last_error is not None:
            log.info("announcing the shard set works again")
        self.last_error = None
        self._read_others()
        return True

    def _read_others(self) -> None:
        try:
            announced = self._registry.announced()
        except redis.RedisError as error:  # the last known counts stay
            log.info("reading the announced shard sets failed", extra={"error": repr(error)})
            return
        window_ms = int(self._interval * RETIRE_AFTER_ANNOUNCEMENTS * 1000)
        self._others = tuple(count for count in announced.last_ms
                             if count != self._shards and not announced.stale(count, window_ms))

    def start(self, loops: Loops) -> Announcer:
        loops.start("shard-set-announcer", self._run)
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while True:
            announced = self.announce_once()
            if self._stopped.wait(self._interval if announced else min(1.0, self._interval)):
                return
