"""A real Redis Cluster for tests: primaries on free loopback ports, joined by redis-cli."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis
from redis.crc import key_slot

from app.shared import contract
from tests.support.netns import IsolatedNetwork
from tests.support.processes import RedisServer, free_port, wait_until

# A cluster node also listens on port + 10000 (the cluster bus).
BUS_PORT_OFFSET = 10_000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose bus port is free too (so it must be below 65535 - 10000)."""
    for _ in range(200):
        port = free_port()
        if port + BUS_PORT_OFFSET < 65535 and _bindable(port + BUS_PORT_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterSet:
    """``primaries`` cluster-enabled redis-servers, every slot covered, and ``replicas`` replicas
    of each (redis-cli places them; three primaries at least then). ``full_coverage`` is
    cluster-require-full-coverage: with it (Redis's default) every node refuses every
    command while any slot has no live primary."""

    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 0, full_coverage: bool = True,
                 acl_file: Path | None = None, admin: tuple[str, str] | None = None,
                 network: IsolatedNetwork | None = None) -> None:
        """``acl_file``: every node loads these users; ``admin`` (user, password) is the test's own;
        ``network``: each node on a host of its own there (so that it can be cut off), else loopback."""
        if replicas and primaries < 3:
            raise ValueError("redis-cli --cluster create needs three primaries for replicas")
        self.primary_count = primaries
        self.nodes: list[RedisServer] = []
        try:
            for number in range(primaries * (1 + replicas)):
                port = free_cluster_port()
                self.nodes.append(RedisServer(
                    workdir / f"cluster-{number}", port=port, appendonly=True, acl_file=acl_file,
                    host=network.add_host() if network else None,
                    username=admin[0] if admin else None, password=admin[1] if admin else None,
                    extra_args=[*(["--masteruser", admin[0], "--masterauth", admin[1]] if admin else []),
                                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                "--cluster-node-timeout", "2000",
                                "--cluster-require-full-coverage", "yes" if full_coverage else "no"],
                ))
            if primaries >= 3:
                addresses = [f"{node.address}:{node.port}" for node in self.nodes]
                credentials = ["--user", admin[0], "--pass", admin[1]] if admin else []
                subprocess.run(["redis-cli", *credentials, "--cluster", "create", *addresses, "--cluster-replicas",
                                str(replicas), "--cluster-yes"], check=True, capture_output=True, timeout=60)
            else:
                self._assign_slots_by_hand()
            wait_until(self._ready, 30, interval=0.2, what="cluster_state:ok on every node, replicas in sync")
        except BaseException:
            self.stop()
            raise
        self.url = self.nodes[0].url

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now (a failover changes which)."""
        return [node for node in self.nodes if node.alive() and self.role(node) == "master"]

    def role(self, node: RedisServer) -> str:
        return str(node.client().execute_command("ROLE")[0].decode())

    def replica_of(self, primary: RedisServer) -> RedisServer:
        replicas = self.replicas_of(primary)
        if not replicas:
            raise LookupError(f"no replica of the primary on {primary.port}")
        return replicas[0]

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        found = []
        for node in self.nodes:
            replication = node.client().info("replication") if node is not primary and node.alive() else {}
            if replication.get("role") == "slave" and int(replication.get("master_port", 0)) == primary.port:
                found.append(node)
        return found

    def _assign_slots_by_hand(self) -> None:
        """redis-cli wants three primaries at least; fewer get equal slot ranges and MEET."""
        width = 16384 // len(self.nodes)
        for number, node in enumerate(self.nodes):
            last = 16383 if number == len(self.nodes) - 1 else (number + 1) * width - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", number * width, last)
            if number:
                self.nodes[0].client().execute_command("CLUSTER", "MEET", node.address, node.port)

    def _ready(self) -> bool:
        for node in self.nodes:
            if node.client().cluster("info").get("cluster_state") != "ok":
                return False
            if len(node.client().cluster("slots")) != self.primary_count:
                return False
            replication = node.client().info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def env(self) -> dict[str, str]:
        return {"REDIS_CLUSTER": "true"}

    def client(self) -> redis.RedisCluster:
        node = self.nodes[0]
        return redis.RedisCluster.from_url(self.url, socket_timeout=5, username=node.username, password=node.password)

    def stream_lengths(self, streams: list[str]) -> dict[str, int]:
        client = self.client()
        try:
            # A shard's entries: its own and its prompt lane's.
            return {stream: client.xlen(stream) + client.xlen(contract.prompt_lane(stream)) for stream in streams}
        finally:
            client.close()

    def node_id(self, node: RedisServer) -> str:
        return node.client().cluster("myid").decode()

    def owner(self, key: str) -> RedisServer:
        """The primary serving the key's slot, as the node itself sees the slot table."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            for start, end, (_, port, *_rest), *_replicas in node.client().cluster("slots"):
                if start <= slot <= end and port == node.port:
                    return node
        raise LookupError(f"no node serves slot {slot}")

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer, batch: int = 100) -> int:
        """Reshards one slot live, as redis-cli --cluster reshard does: IMPORTING and
        MIGRATING, the keys MIGRATEd in batches (clients see ASK meanwhile), then the
        slot handed over on every node (clients see MOVED). Returns the keys moved."""
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
            source.client().execute_command("MIGRATE", target.address, target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        for node in (target, source, *(n for n in self.nodes if n not in (source, target))):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
