from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import RedisClusterSet
from tests.support.netns import IsolatedNetwork
from tests.support.processes import Managed, Proxy, RedisServer, Worker
from tests.support.sentinel import SentinelSet


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session", autouse=True)
def _redis_server_installed() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH; run `make setup` (it installs Debian's redis-server)")


class Stack:
    """The processes one test starts; all stopped at teardown, by PID."""

    def __init__(self, workdir: Path, redis_server: RedisServer, **common_env: str) -> None:
        self.workdir = workdir
        self.redis = redis_server
        # Given to every proxy and worker (a cluster's REDIS_CLUSTER, say).
        self.common_env = common_env
        self.processes: list[Managed] = []

    def proxy(self, **env: str) -> Proxy:
        proxy = Proxy(self.workdir, self.redis.url, **{**self.common_env, **env})
        self.processes.append(proxy)
        return proxy

    def worker(self, name: str, **env: str) -> Worker:
        worker = Worker(self.workdir, self.redis.url, name, **{**self.common_env, **env})
        self.processes.append(worker)
        return worker

    def started(self, proxies: int, workers: list[str], proxy_env: dict[str, str],
                worker_env: dict[str, str]) -> tuple[list[Proxy], list[Worker]]:
        """Proxies and named workers, all answering /readyz."""
        started = [self.proxy(**proxy_env) for _ in range(proxies)], [self.worker(n, **worker_env) for n in workers]
        for process in [*started[0], *started[1]]:
            process.wait_ready()
        return started

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        # A test may have replaced the fixture's Redis with one of its own (a restart).
        self.redis.stop()

    def logs(self) -> str:
        parts = []
        for process in [*self.processes, self.redis]:
            text = process.log()
            parts.append(f"----- {process.name} (pid {process.pid}) -----\n{text[-6000:]}")
        return "\n".join(parts)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def _run_stack(running: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield running
    running.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(running.logs())


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _run_stack(Stack(tmp_path, redis_server), request)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet(tmp_path / "cluster")
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_stack(tmp_path: Path, redis_cluster: RedisClusterSet, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Proxies and workers on a three-primary cluster; REDIS_URL names its first node."""
    yield from _run_stack(Stack(tmp_path, redis_cluster.nodes[0], **redis_cluster.env()), request)


def _started_cluster(tmp_path: Path, **options: Any) -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet(tmp_path / "cluster", **options)
    yield cluster
    cluster.stop()


def _cluster_stack(tmp_path: Path, cluster: RedisClusterSet, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Proxies and workers on the cluster; REDIS_URL names its first node."""
    yield from _run_stack(Stack(tmp_path, cluster.nodes[0], **cluster.env()), request)


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    """Three primaries with a replica each (cluster-node-timeout 2000 ms), configured as the
    README recommends: cluster-require-full-coverage no."""
    yield from _started_cluster(tmp_path, replicas=1, full_coverage=False)


@pytest.fixture
def replicated_cluster_stack(tmp_path: Path, replicated_cluster: RedisClusterSet,
                             request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _cluster_stack(tmp_path, replicated_cluster, request)


@pytest.fixture
def isolated_network() -> Iterator[IsolatedNetwork]:
    """A bridge and a network namespace per host (tests.support.netns): torn down after the
    processes started in it, which depend on it."""
    network = IsolatedNetwork()
    yield network
    network.close()


@pytest.fixture
def partitionable_cluster(tmp_path: Path, isolated_network: IsolatedNetwork,
                          request: pytest.FixtureRequest) -> Iterator[RedisClusterSet]:
    """Like replicated_cluster (replicas per primary: the indirect parameter, 1 unless given),
    each node on a host of its own, so that one can be cut off."""
    yield from _started_cluster(tmp_path, replicas=getattr(request, "param", 1), full_coverage=False,
                                network=isolated_network)


@pytest.fixture
def partitionable_cluster_stack(tmp_path: Path, partitionable_cluster: RedisClusterSet,
                                request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _cluster_stack(tmp_path, partitionable_cluster, request)


@pytest.fixture
def fully_covered_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    """A replica per primary and Redis's default cluster-require-full-coverage yes."""
    yield from _started_cluster(tmp_path, replicas=1, full_coverage=True)


@pytest.fixture
def fully_covered_cluster_stack(tmp_path: Path, fully_covered_cluster: RedisClusterSet,
                                request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _cluster_stack(tmp_path, fully_covered_cluster, request)


@pytest.fixture
def doubly_replicated_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    """Two replicas per primary: once one is promoted the other follows it, so WAIT 1 can be met again."""
    yield from _started_cluster(tmp_path, replicas=2, full_coverage=False)


@pytest.fixture
def doubly_replicated_cluster_stack(tmp_path: Path, doubly_replicated_cluster: RedisClusterSet,
                                    request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _cluster_stack(tmp_path, doubly_replicated_cluster, request)


@pytest.fixture
def partitionable_sentinels(tmp_path: Path, isolated_network: IsolatedNetwork,
                            request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    """Like ``sentinels`` (2 replicas unless given), every node and Sentinel on a host of its own."""
    running = SentinelSet(tmp_path / "sentinel-set", replicas=getattr(request, "param", 2), network=isolated_network)
    yield running
    running.stop()


@pytest.fixture
def sentinels(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    """A primary (AOF), replicas (1, or `indirect` parametrize) and three Sentinels."""
    running = SentinelSet(tmp_path / "sentinel-set", replicas=getattr(request, "param", 1))
    yield running
    running.stop()
