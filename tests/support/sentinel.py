"""A real Sentinel set for tests: a primary (AOF), replicas and three Sentinels."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.support.netns import Host, IsolatedNetwork
from tests.support.processes import Managed, RedisServer, base_env, free_port, wait_until

MASTER_NAME = "mymaster"
# REDIS_URL names only the database in Sentinel mode: a host that does not exist proves it.
SENTINEL_URL = "redis://not-used-in-sentinel-mode:6379/0"
# Not lower: a Sentinel that has just switched to the promoted primary marks it down when
# its first PONG takes longer than this, and fails over a second time (seen on 2 busy
# cores at 1000 ms: the other replica promoted 2 s after the first, left without a replica).
DOWN_AFTER_MS = 2000


class SentinelProcess(Managed):
    def __init__(self, workdir: Path, primary: RedisServer, admin: tuple[str, str] | None = None,
                 host: Host | None = None) -> None:
        self.port = free_port()
        self.address = host.address if host else "127.0.0.1"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "sentinel.conf"
        # Sentinel rewrites its config file as it learns the set, so it lives in the temp folder.
        config.write_text(
            f"port {self.port}\nbind {self.address}\ndir {workdir}\n"
            + ("protected-mode no\n" if host else "")
            + f"sentinel monitor {MASTER_NAME} {primary.address} {primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            + (f"sentinel auth-user {MASTER_NAME} {admin[0]}\nsentinel auth-pass {MASTER_NAME} {admin[1]}\n"
               if admin else "")
        )
        argv = ["redis-server", str(config), "--sentinel"]
        super().__init__(f"sentinel:{self.port}", host.command(argv) if host else argv, base_env(),
                         workdir / "sentinel.log")
        wait_until(lambda: self.client().ping(), 10, what=f"sentinel on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.address, port=self.port, socket_timeout=2, decode_responses=True)


class SentinelSet:
    """Started in order: primary, replicas (synced), Sentinels (seeing every replica)."""

    def __init__(self, workdir: Path, replicas: int = 1, acl_file: Path | None = None,
                 admin: tuple[str, str] | None = None, network: IsolatedNetwork | None = None) -> None:
        """``acl_file``: every node loads these users; ``admin`` (user, password) is what the
        test, the replicas and the Sentinels use; ``network``: every node and Sentinel on a
        host of its own there (so that one can be cut off), else loopback."""
        def host() -> Host | None:
            return network.add_host() if network else None

        self.workdir = workdir
        credentials = {"acl_file": acl_file, "username": admin[0], "password": admin[1]} if admin else {}
        replication = ["--masteruser", admin[0], "--masterauth", admin[1]] if admin else []
        self.primary = RedisServer(workdir / "node-0", appendonly=True, extra_args=replication, host=host(),
                                   **credentials)
        self.replicas = [
            RedisServer(workdir / f"node-{n}", appendonly=True, host=host(), **credentials,
                        extra_args=[*replication, "--replicaof", self.primary.address, str(self.primary.port)])
            for n in range(1, replicas + 1)
        ]
        for replica in self.replicas:
            wait_until(lambda r=replica: r.client().info("replication")["master_link_status"] == "up", 20,
                       what=f"{replica.name} in sync")
        self.sentinels = [SentinelProcess(workdir / f"sentinel-{n}", self.primary, admin, host())
                          for n in range(3)]
        wait_until(self._everyone_sees_everyone, 20, interval=0.2, what="sentinels discover the set")

    def _everyone_sees_everyone(self) -> bool:
        for sentinel in self.sentinels:
            master = sentinel.client().sentinel_master(MASTER_NAME)
            if int(master["num-slaves"]) < len(self.replicas) or int(master["num-other-sentinels"]) < 2:
                return False
        return True

    @property
    def addresses(self) -> str:
        return ",".join(f"{s.address}:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """What a proxy or worker needs to use this set (REDIS_URL gives only the database)."""
        return {"REDIS_SENTINELS": self.addresses, "REDIS_SENTINEL_MASTER": MASTER_NAME}

    def primary_port(self) -> int:
        return int(self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def node(self, port: int) -> RedisServer:
        return next(node for node in [self.primary, *self.replicas] if node.port == port)

    def wait_promotion(self, old_port: int, timeout: float = 20) -> float:
        """Seconds until every Sentinel names a primary other than `old_port` and it says it is one."""
        started = time.monotonic()

        def promoted() -> bool:
            ports = {int(s.client().sentinel_get_master_addr_by_name(MASTER_NAME)[1]) for s in self.sentinels}
            if len(ports) != 1 or old_port in ports:
                return False
            return self.node(ports.pop()).client().info("replication")["role"] == "master"

        wait_until(promoted, timeout, interval=0.05, what="a replica promoted")
        return time.monotonic() - started

    def processes(self) -> list[Managed]:
        return [self.primary, *self.replicas, *self.sentinels]

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()
