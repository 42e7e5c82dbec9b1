"""Which request stream shards can confirm a write (REDIS_WAIT_REPLICAS=N): those whose
primary has N replicas online, as the node itself says (ROLE lists the replicas that are
online), asked every CHECK_SECONDS.

A WAIT that falls short pauses its shard (app.proxy.enqueue) and asks for a check at once:
a replica that is online but slow leaves the shard to the pause and its trials, one that
is gone takes the shard out until ROLE lists enough replicas again. Every proxy process
asks the nodes themselves, so all of them act on the same state: a primary that lost its
replica (or was promoted without one) takes no new entries from any proxy until one is
attached, instead of one trial a second per process, each paying a WAIT timeout. The
workers still drain what the shard holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from app.proxy.shards import ShardHealth
from app.shared.connections import RedisClient
from app.shared.loops import Loops
from app.shared.topology import Topology

log = logging.getLogger("app.proxy")

CHECK_SECONDS = 2.0
# While a primary cannot confirm, it is asked more often: callers wait for its replica.
DOUBTFUL_CHECK_SECONDS = 0.5
# However many WAITs fall short at once, one check answers them all.
SOONEST_RECHECK_SECONDS = 0.2


def is_primary(role: Sequence[Any]) -> bool:
    return bool(role) and role[0] in (b"master", "master")


def online_replicas(role: Sequence[Any]) -> int:
    """Replicas a node has online, from its ROLE answer (a replica's own ROLE: none)."""
    return len(role[2]) if is_primary(role) else 0


class ReplicaWatch:
    def __init__(self, topology: Topology, client: RedisClient, shards: ShardHealth, replicas: int) -> None:
        self._topology = topology
        self._redis = client
        self._shards = shards
        self._replicas = replicas
        self._doubtful = False
        self._wake = threading.Event()

    def check_soon(self) -> None:
        """A WAIT fell short: ask the nodes now rather than at the next round."""
        self._wake.set()

    def check_once(self) -> None:
        doubtful = False
        nodes: dict[int, tuple[Any, list[str]]] = {}
        for stream in self._shards.streams:
            try:
                node = self._topology.node_client(self._redis, stream)
            except (redis.RedisError, RedisClusterException):  # a topology's own error, or redis-py's
                continue  # no route to it now: its writes say more than this check can
            nodes.setdefault(id(node), (node, []))[1].append(stream)
        for node, streams in nodes.values():
            try:
                role = node.execute_command("ROLE")
            except redis.RedisError as error:
                log.debug("replica check failed", extra={"streams": streams, "error": repr(error)})
                continue
            able = online_replicas(role) >= self._replicas
            if not able:
                # Perhaps no longer the primary (Sentinel promotes a replica before it demotes the
                # old primary, which keeps the pooled connections; a slot map may be stale): the
                # next look asks where the primary is now, sooner than usual.
                self._topology.refresh_routes(self._redis)
                self._topology.forget_idle_connections(node)
                doubtful = True
            for stream in streams:
                self._shards.can_confirm(stream, able)
        self._doubtful = doubtful

    def start(self, loops: Loops) -> ReplicaWatch:
        loops.start("replica-watch", self._run)
        return self

    def _run(self) -> None:
        while True:
            self.check_once()
            time.sleep(SOONEST_RECHECK_SECONDS)
            self._wake.wait((DOUBTFUL_CHECK_SECONDS if self._doubtful else CHECK_SECONDS) - SOONEST_RECHECK_SECONDS)
            self._wake.clear()
