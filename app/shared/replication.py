"""Confirming writes on replicas with WAIT (REDIS_WAIT_REPLICAS).

WAIT counts the replicas that have every write of its own connection, so it is sent
in the same pipeline as the writes it confirms: one WAIT per pipeline, however many
writes it carries.
"""

from __future__ import annotations

from typing import Any

import redis


class ReplicasBehind(redis.ConnectionError):
    """Fewer replicas confirmed the write than asked: a failed try, retried like a
    lost connection (the write may still be lost in a failover)."""


class ReplicaWait:
    def __init__(self, replicas: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    def add_to(self, pipe: Any) -> None:
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    def shortfall(self, results: list[Any]) -> ReplicasBehind | None:
        """The error to give the pipeline's writes when its WAIT (its last result) fell short."""
        if not self.replicas:
            return None
        confirmed = results[-1]
        if isinstance(confirmed, int) and confirmed >= self.replicas:
            return None
        return ReplicasBehind(f"{confirmed!r} of {self.replicas} replicas confirmed the write within "
                              f"{self.timeout_ms} ms")
