"""What every Redis client of both services shares, whatever the topology
(app.shared.topology decides which client to build).

redis-py retries on its own by default. Both services switch that off so that one
policy (app.shared.resilience) decides how often and how long to retry, and the
circuit breaker sees every failure.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

# Readiness means Redis answers PING within this; both services probe the same way.
READINESS_PING_TIMEOUT_SECONDS = 0.5

# What the services hold: either client answers the same commands.
RedisClient: TypeAlias = redis.Redis | redis.RedisCluster

_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})


class StreamReadingCluster(redis.RedisCluster):
    """redis-py asks the server (COMMAND GETKEYS, one more round trip to one node) for
    the keys of every command whose keys move, as XREAD and XREADGROUP's do: measured,
    that was 1.4 extra commands per request, all on one primary. Their keys follow
    STREAMS, so the slot is found here without asking."""

    def determine_slot(self, *args: Any) -> int | None:
        if str(args[0]).upper() in _STREAM_READS:
            words = [arg.upper() if isinstance(arg, bytes) else str(arg).upper().encode() for arg in args]
            if b"STREAMS" in words:
                after = args[words.index(b"STREAMS") + 1:]
                slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in after[:len(after) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        slot: int | None = super().determine_slot(*args)
        return slot


def no_retries() -> Retry:
    return Retry(NoBackoff(), 0)
