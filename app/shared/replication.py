"""Confirming writes on replicas with WAIT (REDIS_WAIT_REPLICAS).

WAIT counts the replicas that have every write of its own connection, so it is sent
in the same pipeline as the writes it confirms: one WAIT per pipeline, however many
writes it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from app.shared.connections import RedisClient


class ReplicasBehind(redis.ConnectionError):
    """Fewer replicas confirmed the write than asked: a failed try, retried like a
    lost connection (the write may still be lost in a failover)."""


class ReplicaWait:
    def __init__(self, replicas: int, timeout_ms: int,
                 forget_idle_connections: Callable[[RedisClient], None] = lambda client: None) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._forget_idle_connections = forget_idle_connections

    def add_to(self, pipe: Any) -> None:
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    def check(self, results: list[Any], client: RedisClient) -> None:
        """Raises ReplicasBehind when the pipeline's WAIT (its last result) fell short.

        The idle connections are dropped too: a primary that lost its replicas may have
        been replaced (Sentinel promotes a replica before it demotes the old primary,
        which keeps taking writes meanwhile), and a new connection asks again where the
        primary is."""
        if self.replicas and int(results[-1]) < self.replicas:
            self._forget_idle_connections(client)
            raise ReplicasBehind(
                f"{results[-1]} of {self.replicas} replicas confirmed the write within {self.timeout_ms} ms"
            )
