"""The system a soak runs against, as production runs it: Redis with persistence (every node
on a host of its own, so it can be cut off or slowed), several proxies of several processes,
several workers; and what the checker reads from it afterwards."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from app.shared import contract
from tests.support.cluster import RedisClusterSet
from tests.support.netns import IsolatedNetwork
from tests.support.processes import Managed, Proxy, RedisServer, Worker
from tests.support.sentinel import SentinelSet
from tools.redis_acl import rules

TOPOLOGIES = ("cluster", "sentinel", "standalone")
PASSWORD_VARIABLES = ("REDIS_ACL_PROXY_PASSWORD", "REDIS_ACL_WORKER_PASSWORD", "REDIS_ACL_MONITOR_PASSWORD",
                      "REDIS_ACL_ADMIN_PASSWORD")
SHARDS = 6


@dataclass(frozen=True)
class Timings:
    request_timeout_seconds: float = 10.0
    # Short, so that a run of minutes trims the request streams (the window is this plus 60 s).
    async_deadline_seconds: float = 30.0
    result_ttl_seconds: float = 300.0
    # The lease: a frozen worker's entries are taken over after this long.
    claim_idle_seconds: float = 3.0

    @property
    def trim_window_seconds(self) -> float:
        return self.async_deadline_seconds + 60


@dataclass(frozen=True)
class Execution:
    """One piece of work done, as the worker logged it when it replied."""
    at: float  # seconds since the soak started
    worker: str
    request_id: str
    entry_id: str
    deliveries: int


class System:
    def __init__(self, workdir: Path, topology: str, timings: Timings, proxies: int = 2, workers: int = 3) -> None:
        if topology not in TOPOLOGIES:
            raise ValueError(f"SOAK_TOPOLOGY must be one of {', '.join(TOPOLOGIES)}, not {topology!r}")
        self.topology = topology
        self.timings = timings
        self.network = IsolatedNetwork()
        self.cluster: RedisClusterSet | None = None
        self.sentinels: SentinelSet | None = None
        self.standalone: RedisServer | None = None
        self.proxies: list[Proxy] = []
        self.workers: list[Worker] = []
        try:
            env = self._start_redis(workdir)
            common = {**env, "REQUEST_STREAM_SHARDS": str(SHARDS)}
            proxy_env = {**common, "REQUEST_TIMEOUT_SECONDS": str(timings.request_timeout_seconds),
                         "ASYNC_DEADLINE_SECONDS": str(timings.async_deadline_seconds),
                         "RESULT_TTL_SECONDS": str(timings.result_ttl_seconds)}
            worker_env = {**common, "WORKER_TERMINALS": "8", "PROCESSING_DELAY_MS": "10-100",
                          "CLAIM_IDLE_SECONDS": str(timings.claim_idle_seconds), "SHUTDOWN_GRACE_SECONDS": "8",
                          # One "replied" line per piece of work: where executions are counted.
                          "LOG_LEVEL": "DEBUG"}
            # (the helpers' keyword arguments mix their own options with the environment)
            proxy_env.update(self.logins["proxy"])
            worker_env.update(self.logins["worker"])
            self.proxies = [Proxy(workdir, self.redis_url, **proxy_env) for _ in range(proxies)]  # type: ignore[arg-type]
            self.workers = [Worker(workdir, self.redis_url, f"soak-worker-{n}", **worker_env)  # type: ignore[arg-type]
                            for n in range(workers)]
            for proxy in self.proxies:
                proxy.wait_ready(60)
            for worker in self.workers:
                worker.wait_ready(60)
        except BaseException:
            self.stop()
            raise

    def _start_redis(self, workdir: Path) -> dict[str, str]:
        """Every node with the users of app.shared.acl (the default user off), as the chart
        runs Redis; each service logs in as its own user."""
        passwords = {variable: secrets.token_hex(16) for variable in PASSWORD_VARIABLES}
        acl_file = workdir / "users.acl"
        workdir.mkdir(parents=True, exist_ok=True)
        acl_file.write_text("\n".join(rules(contract.DEFAULT_REQUEST_STREAM, passwords)) + "\n")
        admin = ("admin", passwords["REDIS_ACL_ADMIN_PASSWORD"])
        self.logins = {user: {"REDIS_USERNAME": user, "REDIS_PASSWORD": passwords[f"REDIS_ACL_{user.upper()}_PASSWORD"]}
                       for user in ("proxy", "worker")}
        # WAIT for every replica: a write confirmed by one of two replicas is lost when the other
        # is promoted (the one that had it then resyncs from the new primary): seen in this soak.
        wait = {"REDIS_WAIT_TIMEOUT_MS": "200"}
        if self.topology == "cluster":
            self.cluster = RedisClusterSet(workdir / "cluster", replicas=1, full_coverage=False, network=self.network,
                                           acl_file=acl_file, admin=admin)
            self.redis_url = self.cluster.url
            seeds = ",".join(f"{node.address}:{node.port}" for node in self.cluster.nodes)
            return {**self.cluster.env(), "REDIS_CLUSTER_NODES": seeds, **wait, "REDIS_WAIT_REPLICAS": "1"}
        if self.topology == "sentinel":
            self.sentinels = SentinelSet(workdir / "sentinel-set", replicas=2, network=self.network,
                                         acl_file=acl_file, admin=admin)
            self.redis_url = "redis://soak-sentinel-mode/0"
            return {**self.sentinels.env(), **wait, "REDIS_WAIT_REPLICAS": "2"}
        # One Redis: an append-only file fsynced every second, the loss it allows stated.
        self.standalone = RedisServer(workdir / "redis", appendonly=True, host=self.network.add_host(),
                                      acl_file=acl_file, username=admin[0], password=admin[1])
        self.redis_url = self.standalone.url
        return {}

    def nodes(self) -> list[RedisServer]:
        if self.cluster:
            return list(self.cluster.nodes)
        if self.sentinels:
            return [self.sentinels.primary, *self.sentinels.replicas]
        assert self.standalone is not None
        return [self.standalone]

    def primaries(self) -> list[RedisServer]:
        """The nodes taking writes now, by port (a failover changes which)."""
        if self.cluster:
            return sorted(self.cluster.primaries(), key=lambda node: node.port)
        if self.sentinels:
            return [self.sentinels.node(self.sentinels.primary_port())]
        assert self.standalone is not None
        return [self.standalone]

    def restart(self, node: RedisServer) -> None:
        """Starts a stopped Redis node again from its files. Under Sentinel it starts as a
        primary and Sentinel turns it into a replica of whichever node is primary now, as with
        any node that comes back: its start command names the first primary, which may be a
        replica by now (two replicas of each other: no primary at all)."""
        if self.sentinels:
            node.argv = _without_option(node.argv, "--replicaof", values=2)
        node.restart()

    def client(self) -> redis.Redis | redis.RedisCluster:
        if self.cluster:
            return self.cluster.client()
        return self.primaries()[0].client()

    def proxy_urls(self) -> list[str]:
        return [proxy.url for proxy in self.proxies]

    def service_processes(self) -> dict[str, int]:
        """Every service process, named with its PID (a restarted one is another process): each
        proxy's master and its children, each worker."""
        found: dict[str, int] = {}
        for proxy in self.proxies:
            if proxy.alive():
                found[f"{proxy.name} master {proxy.pid}"] = proxy.pid
                for child in children(proxy.pid):
                    found[f"{proxy.name} process {child}"] = child
        for worker in self.workers:
            if worker.alive():
                found[f"{worker.name} {worker.pid}"] = worker.pid
        return found

    def metric_series(self) -> dict[str, list[str]]:
        """Each service's metric series (name and labels) as it exposes them now."""
        series = {}
        services = [*((p.name, p.metrics_url) for p in self.proxies), *((w.name, w.metrics_url) for w in self.workers)]
        for name, url in services:
            try:
                text = requests.get(url + "/metrics", timeout=5).text
            except requests.RequestException:
                continue
            series[name] = [line.rsplit(" ", 1)[0] for line in text.splitlines()
                                    if line and not line.startswith("#")]
        return series

    def executions(self, started_at: float) -> list[Execution]:
        """The work the workers did, from their own log lines (``replied``)."""
        done = []
        for worker in self.workers:
            for line in worker.log().splitlines():
                if '"replied"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("message") != "replied":
                    continue
                done.append(Execution(_epoch(entry["time"]) - started_at, worker.name, entry.get("request_id", ""),
                                      entry["entry_id"], int(entry.get("deliveries", 1))))
        return done

    def redis_complaints(self) -> list[str]:
        """What Redis itself reports as wrong: commands its users were refused (ACL LOG) and
        blocks of its append-only file it would not replay (``== CRITICAL ==`` lines)."""
        found = []
        for node in self.nodes():
            found += [f"{node.name}: {line.strip()[:300]}" for line in node.log().splitlines() if "CRITICAL" in line]
            try:
                found += [f"{node.name}: {entry['username']} refused {entry['object']} ({entry['reason']})"
                          for entry in node.client().acl_log()]
            except redis.RedisError as error:
                found.append(f"{node.name}: ACL LOG unreadable: {error}")
        return found

    def request_streams(self) -> list[str]:
        streams = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, SHARDS, tagged=self.cluster is not None)
        return [*streams, *(contract.prompt_lane(stream) for stream in streams)]

    def stop(self) -> None:
        for process in [*self.workers, *self.proxies]:
            process.stop()
        for node in self._redis_processes():
            node.stop()
        self.network.close()

    def _redis_processes(self) -> list[Managed]:
        if self.cluster:
            return list(self.cluster.nodes)
        if self.sentinels:
            return list(reversed(self.sentinels.processes()))
        return [self.standalone] if self.standalone else []


def _without_option(argv: list[str], option: str, values: int) -> list[str]:
    if option not in argv:
        return argv
    at = argv.index(option)
    return argv[:at] + argv[at + 1 + values:]


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


