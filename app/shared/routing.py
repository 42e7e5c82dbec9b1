"""Writes grouped by the node that holds their key: one plain pipeline per node, an outcome per item.

redis-py's cluster pipeline succeeds or fails as a whole: one node it cannot reach fails
every command of the batch, those that landed on healthy nodes included, and it cannot
say which were written. Here each node's share is its own pipeline, so a node that is
down fails its own items only, and an item's error says whether the write may have
landed:

- ``NotSent``: it never reached Redis (no connection could be made) or the node refused
  it before executing anything (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY, LOADING).
  Sending it again, anywhere, cannot make a duplicate.
- ``ReplicasBehind``: it is on the primary but fewer replicas than asked confirmed it.
- any other error: it was sent and its fate is unknown (a connection lost mid-answer).

With REDIS_WAIT_REPLICAS above 0 each node's pipeline ends with one WAIT: in a cluster
each primary confirms its own share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from app.shared.connections import RedisClient
from app.shared.replication import ReplicasBehind, ReplicaWait
from app.shared.topology import Topology

log = logging.getLogger("app.routing")

# Answers by which a node refuses a command before executing it.
_REFUSALS = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError, BusyLoadingError)


class NotSent(redis.ConnectionError):
    """The item was not written: sending it again cannot make a duplicate."""


@dataclass(frozen=True, slots=True)
class Routed:
    """Commands about one key (``add`` puts them on a pipeline); the item's result is the
    list of its commands' results, or the first error among them."""

    key: str
    add: Callable[[Any], None]


def is_not_sent(error: BaseException | None) -> bool:
    return isinstance(error, NotSent)


def refused_before_executing(error: BaseException) -> bool:
    return isinstance(error, _REFUSALS)


class NodeWriter:
    """Sends ``Routed`` items, each node's share in one pipeline of its own."""

    def __init__(self, topology: Topology, client: RedisClient, replicas: ReplicaWait) -> None:
        self._topology = topology
        self._client = client
        self._replicas = replicas

    def execute(self, items: Sequence[Routed]) -> list[Any]:
        """One result per item: a value, or the item's error (never raised)."""
        nodes: dict[int, tuple[redis.Redis, list[int]]] = {}
        results: list[Any] = [None] * len(items)
        stale_routes = False
        for index, item in enumerate(items):
            try:
                node = self._topology.node_client(self._client, item.key)
            except (RedisClusterException, redis.ConnectionError) as error:  # its slot has no node in the map
                results[index] = NotSent(f"no node holds its slot: {error}")
                stale_routes = True
                continue
            nodes.setdefault(id(node), (node, []))[1].append(index)
        for node, indexes in nodes.values():
            outcomes = self._execute_on(node, [items[index] for index in indexes])
            for index, outcome in zip(indexes, outcomes, strict=True):
                results[index] = outcome
                # NotSent is a ConnectionError; a WAIT shortfall says nothing about the routes.
                stale_routes = stale_routes or (isinstance(outcome, redis.ConnectionError | redis.TimeoutError)
                                                and not isinstance(outcome, ReplicasBehind))
        if stale_routes:
            # A node failed or refused: the slot map may be out of date (a failover).
            self._topology.refresh_routes(self._client)
        return results

    def reconnect(self, key: str) -> None:
        """Drops the idle connections to the node of ``key``: their next use asks the
        topology (Sentinel, the slot map) where that node is now. With no route to it (its
        slot has no node for now) there is nothing to drop."""
        try:
            node = self._topology.node_client(self._client, key)
        except (redis.RedisError, RedisClusterException) as error:
            log.info("no node to reconnect to", extra={"key": key, "error": repr(error)})
            return
        self._topology.forget_idle_connections(node)

    def _execute_on(self, node: redis.Redis, items: list[Routed]) -> list[Any]:
        try:
            # Taken before anything is written, so a failure here proves nothing was sent.
            connection = node.connection_pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            return [NotSent(f"not sent: {error}")] * len(items)
        pipe: Any = node.pipeline(transaction=False)
        # The pipeline uses (and on reset releases) the connection it finds here.
        pipe.connection = connection
        spans: list[tuple[int, int]] = []
        try:
            for item in items:
                start = len(pipe)
                item.add(pipe)
                spans.append((start, len(pipe)))
            self._replicas.add_to(pipe)
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if isinstance(error.__context__, ReadOnlyError):
                # Sentinel's connection turns a READONLY answer into a ConnectionError: the
                # node (a demoted primary) refused the writes. Its other idle connections
                # lead there too; dropped, they ask the Sentinels again.
                self._topology.forget_idle_connections(node)
                return [NotSent(f"refused by a demoted primary: {error}")] * len(items)
            # Written, perhaps executed: its fate is unknown.
            return [error] * len(items)
        finally:
            pipe.reset()
        shortfall = self._replicas.shortfall(replies)
        outcomes: list[Any] = []
        for start, end in spans:
            failure = next((reply for reply in replies[start:end] if isinstance(reply, BaseException)), None)
            if failure is not None and refused_before_executing(failure):
                outcomes.append(NotSent(f"refused with {type(failure).__name__}: {failure}"))
            elif failure is not None:
                outcomes.append(failure)
            elif shortfall is not None:
                outcomes.append(shortfall)
            else:
                outcomes.append(replies[start:end])
        if shortfall is not None:
            self._topology.forget_idle_connections(node)
        return outcomes
