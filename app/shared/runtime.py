"""What each service holds of Redis besides its own clients, built the same way for both:
the topology, a readiness client, the guard (retries and circuit breaker) and WAIT."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.shared.connections import READINESS_PING_TIMEOUT_SECONDS, RedisClient
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard
from app.shared.settings import CommonSettings
from app.shared.topology import Topology


@dataclass(frozen=True)
class RedisRuntime:
    topology: Topology
    ping_client: RedisClient  # readiness, and the breaker's probe
    guard: RedisGuard
    replica_wait: ReplicaWait
    settings: CommonSettings

    def ping(self) -> None:
        """Whether Redis can take work: readiness and the process breaker's probe."""
        self.topology.ping_serving(self.ping_client)

    def shard_guard(self, service: str, stream: str) -> RedisGuard:
        """A breaker of a shard's own, probed on the shard's node: in a cluster one node's
        failure must not refuse the work of the others (the process's guard stays for
        what spans every shard, and closes when a shard's reads succeed)."""
        ping_client, topology = self.ping_client, self.topology
        return RedisGuard(f"{service}:{stream}", self.settings.retry_policy, self.settings.circuit_failure_threshold,
                          self.settings.circuit_reset_seconds,
                          probe=lambda: topology.ping_node_of(ping_client, stream),
                          on_success=self.guard.confirm_reachable)


def redis_runtime(service: str, name: str, settings: CommonSettings,
                  on_circuit_state: Callable[[int], None]) -> RedisRuntime:
    topology = settings.topology
    ping_client = topology.client(client_name=f"{service}-ready:{name}",
                                  socket_timeout=READINESS_PING_TIMEOUT_SECONDS, max_connections=4)
    guard = RedisGuard(service, settings.retry_policy, settings.circuit_failure_threshold,
                       settings.circuit_reset_seconds, on_state=on_circuit_state,
                       probe=lambda: topology.ping_serving(ping_client))
    replica_wait = ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    return RedisRuntime(topology, ping_client, guard, replica_wait, settings)
