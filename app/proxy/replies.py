"""Reply routing inside one proxy process.

Each gunicorn worker process owns one reply stream per request stream shard (the
shard's hash tag keeps it on the shard's node; app.shared.contract.reply_streams).
Listener greenlets read them with blocking XREADs, one per group of streams that one
XREAD may name together (all of them on one Redis; one per slot in a cluster), and wake
the request waiting for each reply by its correlation id. No other process reads these
streams, so no replica can take or delete another's reply.

A reader that loses its node backs off and tries again on its own; the others go on
reading, so a node's failure delays only the replies that live on it. The readers do
not count failures against the process's circuit breaker (only a request that no shard
can take does), but they probe it while it is open and close it when they read again,
so that its recovery is noticed without a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
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
    def __init__(self, client: RedisClient, streams: Mapping[str, str], read_together: list[list[str]],
                 node_ping: Callable[[str], object], guard: RedisGuard, reconnect_max_seconds: float) -> None:
        """``streams``: this process's reply stream per request stream shard;
        ``read_together``: the reply streams grouped so that one XREAD may name each group;
        ``node_ping``: a PING of the node that holds a key."""
        self.streams = streams
        self._waiters: dict[str, AsyncResult] = {}
        self._readers = [
            _GroupReader(client, group, partial(node_ping, group[0]), guard, reconnect_max_seconds,
                         self._deliver, self._report)
            for group in read_together
        ]

    def start(self) -> None:
        for reader in self._readers:
            reader.start()

    def stop(self) -> None:
        for reader in self._readers:
            reader.stop()

    @property
    def healthy(self) -> bool:
        return all(reader.healthy for reader in self._readers)

    @property
    def connected(self) -> bool:
        return all(reader.connected for reader in self._readers)

    def expect(self, key: str) -> AsyncResult:
        """Register before enqueuing, so that even an instant reply finds its waiter.
        ``key`` is unique within this process (the correlation id), unlike a caller's request id."""
        waiter = AsyncResult()
        self._waiters[key] = waiter
        return waiter

    def forget(self, key: str) -> None:
        self._waiters.pop(key, None)

    def _deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
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

    def _report(self) -> None:
        metrics.REDIS_UP.set(1 if self.connected else 0)


class _GroupReader:
    """One blocking XREAD loop over reply streams that one command may name together."""

    def __init__(self, client: RedisClient, streams: list[str], ping: Callable[[], object], guard: RedisGuard,
                 reconnect_max_seconds: float, deliver: Callable[[list[Any]], None],
                 on_connection_change: Callable[[], None]) -> None:
        self._redis = client
        self._ping = ping
        self._guard = guard
        self._deliver = deliver
        self._on_connection_change = on_connection_change
        self._backoff = LoopBackoff(0.05, reconnect_max_seconds)
        self._last_ids: dict[Any, Any] = dict.fromkeys(streams, b"0-0")
        self._greenlet: gevent.Greenlet | None = None
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

    def _run(self) -> None:
        while True:
            self.last_loop_monotonic = time.monotonic()
            # While the process's breaker is open, an answer here half-opens it.
            self._guard.probe()
            try:
                if not self.connected:
                    # Known to be reachable now, not only when the first blocking read returns.
                    self._ping()
                    self._mark_connected()
                    self._guard.confirm_reachable()
                self._refresh_ttl()
                response: Any = self._redis.xread(self._last_ids, count=READ_COUNT, block=BLOCK_MS)
            except redis.RedisError as error:
                if self.connected:
                    log.warning("reply listener lost Redis", extra={"error": repr(error), "streams": self._names()})
                self.connected = False
                self._on_connection_change()
                gevent.sleep(self._backoff.next_delay())
                continue
            self._mark_connected()
            self._guard.confirm_reachable()
            for stream, entries in response or ():
                if entries:
                    self._last_ids[stream.decode() if isinstance(stream, bytes) else stream] = entries[-1][0]
                    self._deliver(entries)

    def _names(self) -> list[str]:
        return list(self._last_ids)

    def _mark_connected(self) -> None:
        if not self.connected:
            log.info("reply listener connected", extra={"streams": self._names()})
            self.connected = True
            self._on_connection_change()
            self._backoff.reset()

    def _refresh_ttl(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= TTL_REFRESH_SECONDS:
            # No-op while a stream does not exist yet; the first reply creates it with the TTL.
            for stream in self._last_ids:
                self._redis.expire(stream, contract.REPLY_STREAM_TTL_SECONDS)
            self._last_refresh = now
