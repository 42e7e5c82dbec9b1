"""What every Redis client of both services shares, whatever the topology
(app.shared.topology decides which client to build).

redis-py retries on its own by default. Both services switch that off so that one
policy (app.shared.resilience) decides how often and how long to retry, and the
circuit breaker sees every failure.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import types
from collections.abc import Callable
from typing import Any, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ReadOnlyError, RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

log = logging.getLogger("app.redis")

# Readiness means Redis answers PING within this; both services probe the same way.
READINESS_PING_TIMEOUT_SECONDS = 0.5

# What the services hold: either client answers the same commands.
RedisClient: TypeAlias = redis.Redis | redis.RedisCluster

_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})
# Keyless reads any primary can answer alike.
_ANY_PRIMARY = frozenset({"COMMAND"})
# However many callers see a failure, the slot map is read again at most this often.
ROUTE_REFRESH_INTERVAL_SECONDS = 0.5


class ClusterUnreachable(redis.ConnectionError):
    """No node of the cluster answers, or none serves a key's slot for now."""


class StreamReadingCluster(redis.RedisCluster):
    """redis-py's cluster client with five of its traps closed.

    - It asks the server (COMMAND GETKEYS, one more round trip to one node) for the keys
      of every command whose keys move, as XREAD and XREADGROUP's do: measured, 1.4 extra
      commands per request, all on one primary. Their keys follow STREAMS, so the slot is
      found here without asking.
    - A READONLY answer (a primary demoted in a failover, still reachable) is raised
      without a look at the slot map, so every later command goes to the same node: here
      it refreshes the routes.
    - Every caller that fails re-reads the slot map (redis/redis-py#4074): under load
      that is a burst of CLUSTER SLOTS at the moment the cluster is weakest.
      ``refresh_routes`` is single flight and runs at most every
      ROUTE_REFRESH_INTERVAL_SECONDS; a caller that finds one running does not wait.
    - The constructor sends COMMAND to a random primary of the slot map, which may be one
      that is down and not yet replaced, and retries are app.shared.resilience's: a process
      starting then failed to start (one in three here). A refused connection moves it on
      to a primary that answers.
    - A cluster it cannot reach at all (re-reading the slot map finds no node) or a slot no
      node serves for a moment raise RedisClusterException and SlotNotCoveredError, which
      are no RedisError: every caller that handles Redis being away (retries, the breaker,
      each background loop's next round) would take them for a bug. Here they are
      ClusterUnreachable, a ConnectionError, as on one Redis; its pipelines share the slot
      map's reader, so theirs too. What redis-py raises for a caller's own mistake (keys of
      two slots in one command) stays what it is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reread = self.nodes_manager.initialize

        def initialize(*args: Any, **kwargs: Any) -> Any:
            try:
                return reread(*args, **kwargs)
            except RedisClusterException as error:
                raise ClusterUnreachable(f"cluster unreachable: {error}") from error

        self.nodes_manager.initialize = initialize  # type: ignore[method-assign]
        self._routes_lock = threading.Lock()
        self._routes_read_at = time.monotonic()
        self.route_refreshes = 0

    def refresh_routes(self) -> None:
        if time.monotonic() - self._routes_read_at < ROUTE_REFRESH_INTERVAL_SECONDS:
            return
        if not self._routes_lock.acquire(blocking=False):
            return
        try:
            self._routes_read_at = time.monotonic()
            self.route_refreshes += 1
            self.nodes_manager.initialize()
        except redis.RedisError as error:
            log.warning("could not read the cluster's slot map", extra={"error": repr(error)})
        finally:
            self._routes_lock.release()

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except SlotNotCoveredError as error:
            raise ClusterUnreachable(str(error)) from error

    def get_node_from_key(self, key: Any, replica: bool = False) -> Any:
        try:
            return super().get_node_from_key(key, replica)  # type: ignore[no-untyped-call]
        except SlotNotCoveredError as error:
            raise ClusterUnreachable(f"no route to {key!r}: {error}") from error

    def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._execute_command(target_node, *args, **kwargs)  # type: ignore[no-untyped-call]
        except ReadOnlyError:
            self.refresh_routes()
            raise
        except redis.ConnectionError:
            if str(args[0]).upper() not in _ANY_PRIMARY:
                raise
            for other in self.get_primaries():  # type: ignore[no-untyped-call]
                if other is target_node:
                    continue
                try:
                    answer = super()._execute_command(other, *args, **kwargs)  # type: ignore[no-untyped-call]
                except redis.ConnectionError:
                    continue
                return answer
            raise

    def determine_slot(self, *args: Any) -> int | None:
        if str(args[0]).upper() in _STREAM_READS:
            words = [arg.upper() if isinstance(arg, bytes) else str(arg).upper().encode() for arg in args]
            if b"STREAMS" in words:
                after = args[words.index(b"STREAMS") + 1:]
                slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in after[:len(after) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        if str(args[0]).upper() == "EVAL_RO" and len(args) > 3 and int(args[2]) == 1:
            # Like EVAL, whose key redis-py reads from the arguments: no COMMAND GETKEYS.
            key = args[3]
            return key_slot(key.encode() if isinstance(key, str) else key)
        slot: int | None = super().determine_slot(*args)
        return slot


class _PollThatNeverYieldsAtZero:
    """``select.poll`` for redis-py's hiredis parser, whose pool checks every connection it
    hands out with a ``poll(0)``. Under gevent that poll is gevent's: a watcher started and a
    turn of the event loop for a check that cannot wait. The OS's own poll answers it in one
    system call; a poll that may wait (a timeout above 0) stays gevent's."""

    __slots__ = ("_registered",)

    def __init__(self) -> None:
        self._registered: list[tuple[Any, int]] = []

    def register(self, fd: Any, mask: int = select.POLLIN | select.POLLPRI | select.POLLOUT) -> None:
        self._registered.append((fd, mask))

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        poller = _os_poll() if timeout == 0 else select.poll()
        for fd, mask in self._registered:
            poller.register(fd, mask)
        return poller.poll(timeout)


class _SelectForRedis(types.ModuleType):
    poll = _PollThatNeverYieldsAtZero

    def __getattr__(self, name: str) -> Any:
        return getattr(select, name)


def spare_readiness_checks_a_hub_turn() -> None:
    """Called once by a gevent-patched process before it sends anything: measured at 300
    req/s, the check's loop turns were the largest single cost of a worker's round trip
    (two per entry: the read and the outcomes' write)."""
    from gevent import monkey
    from redis._parsers import hiredis

    global _os_poll
    if monkey.is_module_patched("select") and getattr(hiredis, "select", None) is select:
        _os_poll = monkey.get_original("select", "poll")
        hiredis.select = _SelectForRedis("select")  # type: ignore[attr-defined]


_os_poll: Callable[[], Any] = select.poll


def failure_detail(error: redis.RedisError, username: str | None) -> str:
    """What a readiness answer and its log line say of a failed Redis call: the error's
    type, and when Redis refused the credentials, whose (never the password)."""
    if isinstance(error, redis.AuthenticationError):
        return f"Redis refused the credentials of user {username or 'default'}"
    return type(error).__name__


def no_retries() -> Retry:
    return Retry(NoBackoff(), 0)
