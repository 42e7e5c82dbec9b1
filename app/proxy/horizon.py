"""How much of the request streams every proxy must keep: trimming (XADD's MINID) follows
the longest deadline in use, so nothing that can still be done is trimmed away, and a
system that never sees an async request keeps only REQUEST_TIMEOUT_SECONDS of entries.

A proxy that accepts an async request keeps the long window at once; every
SYNC_SECONDS each proxy publishes its latest async deadline to one key (a script keeps
the greatest) and reads back the greatest any proxy published. A proxy learns of another's
async entries within SYNC_SECONDS, well inside the trim margin (the entries it could
trim are older than the synchronous timeout plus TRIM_MARGIN_MS)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.loops import Loops

log = logging.getLogger("app.proxy")

SYNC_SECONDS = 5.0
# Requests older than their deadline are useless to a worker. The margin covers clock
# skew between this host and Redis (entry ids carry Redis's clock), so trimming by
# MINID never drops an entry that could still be answered.
TRIM_MARGIN_MS = 60_000

# The greatest async deadline published, kept until it has passed.
_PUBLISH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', mine + tonumber(ARGV[2]))
  return ARGV[1]
end
return tostring(current)
"""


class Horizon:
    def __init__(self, client: RedisClient, request_stream: str, *, timeout_ms: int, async_deadline_ms: int) -> None:
        self._redis = client
        self._key = contract.async_horizon_key(request_stream)
        self._sync_window_ms = timeout_ms + TRIM_MARGIN_MS
        self._async_window_ms = async_deadline_ms + TRIM_MARGIN_MS
        self._mine_ms = 0  # the latest async deadline this process gave
        self._known_ms = 0  # the latest any proxy published
        self._stopped = threading.Event()

    def issued(self, deadline_ms: int) -> None:
        self._mine_ms = max(self._mine_ms, deadline_ms)

    def minid(self, now_ms: int) -> str:
        in_use = max(self._mine_ms, self._known_ms) > now_ms
        return f"{now_ms - (self._async_window_ms if in_use else self._sync_window_ms)}-0"

    def sync_once(self) -> None:
        try:
            answer: Any = self._redis.eval(_PUBLISH, 1, self._key, self._mine_ms, TRIM_MARGIN_MS)
        except redis.RedisError as error:
            log.info("could not publish the async horizon", extra={"error": repr(error)})
            return
        self._known_ms = max(self._known_ms, int(answer))

    def start(self, loops: Loops) -> Horizon:
        loops.start("async-horizon", self._run)
        return self

    def _run(self) -> None:
        while True:
            self.sync_once()
            if self._stopped.wait(SYNC_SECONDS):
                return
