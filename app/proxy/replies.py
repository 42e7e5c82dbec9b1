"""Reply routing inside one proxy process.

Each gunicorn worker process owns one reply stream. One listener greenlet reads it
with a blocking XREAD and wakes the request waiting for each reply by its id. No
other process reads this stream, so no replica can take or delete another's reply.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import redis
from gevent.event import AsyncResult

from app.proxy import metrics
from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.resilience import LoopBackoff, RedisGuard

log = logging.getLogger("app.proxy.replies")

READ_COUNT = 500
BLOCK_MS = 5000
# Refresh the TTL well before it runs out, even on an idle stream.
TTL_REFRESH_SECONDS = contract.REPLY_STREAM_TTL_SECONDS / 4


class ReplyListener:
    def __init__(self, client: RedisClient, stream: str, guard: RedisGuard, reconnect_max_seconds: float) -> None:
        self.stream = stream
        self._redis = client
        self._guard = guard
        self._backoff = LoopBackoff(0.05, reconnect_max_seconds)
        self._waiters: dict[str, AsyncResult] = {}
        self._greenlet: gevent.Greenlet | None = None
        self._last_id = b"0-0"
        self._last_refresh = 0.0
        self.last_loop_monotonic = time.monotonic()
        self.connected = False

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    @property
    def healthy(self) -> bool:
        alive = self._greenlet is not None and not self._greenlet.dead
        return alive and time.monotonic() - self.last_loop_monotonic < BLOCK_MS / 1000 + 10

    def expect(self, key: str) -> AsyncResult:
        """Register before enqueuing, so that even an instant reply finds its waiter.
        ``key`` is unique within this process (the correlation id), unlike a caller's request id."""
        waiter = AsyncResult()
        self._waiters[key] = waiter
        return waiter

    def forget(self, key: str) -> None:
        self._waiters.pop(key, None)

    def _run(self) -> None:
        while True:
            self.last_loop_monotonic = time.monotonic()
            try:
                if not self.connected:
                    # Known to be reachable now, not only when the first blocking read returns.
                    self._guard.call_from_loop(self._redis.ping)
                    self._mark_connected()
                self._refresh_ttl()
                response: Any = self._guard.call_from_loop(
                    self._redis.xread, {self.stream: self._last_id}, count=READ_COUNT, block=BLOCK_MS
                )
            except redis.RedisError as error:
                if self.connected:
                    log.warning("reply listener lost Redis", extra={"error": repr(error), "stream": self.stream})
                self.connected = False
                metrics.REDIS_UP.set(0)
                gevent.sleep(self._backoff.next_delay())
                continue
            self._mark_connected()
            if response:
                self._deliver(response[0][1])

    def _mark_connected(self) -> None:
        if not self.connected:
            log.info("reply listener connected", extra={"stream": self.stream})
            self.connected = True
            metrics.REDIS_UP.set(1)
            self._backoff.reset()

    def _refresh_ttl(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= TTL_REFRESH_SECONDS:
            # No-op while the stream does not exist yet; the first reply creates it with the TTL.
            self._guard.call_from_loop(self._redis.expire, self.stream, contract.REPLY_STREAM_TTL_SECONDS)
            self._last_refresh = now

    def _deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            self._last_id = entry_id
            try:
                reply = contract.Reply.from_fields(fields)
            except contract.PoisonEntry as poison:
                log.error("undecodable reply dropped", extra={"entry_id": entry_id.decode(), "reason": str(poison)})
                continue
            waiter = self._waiters.pop(reply.waiter_key, None)
            if waiter is None:
                metrics.LATE_REPLIES.inc()
                log.info("late reply dropped", extra={"request_id": reply.request_id})
            else:
                waiter.set(reply)
