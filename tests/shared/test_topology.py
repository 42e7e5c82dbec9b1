"""The Redis topology is decided in app/shared/topology.py and nowhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from app.shared.settings import CommonSettings
from app.shared.topology import Cluster, Sentinel, Standalone
from tests.support.processes import ROOT

TOPOLOGY_WORDS = re.compile(r"cluster|sentinel", re.I)
TOPOLOGY_TYPES = re.compile(r"Redis|Cluster|Sentinel|Standalone|Topology")


# The topology module decides; the settings parser reads the variables it decides from
# (REDIS_SENTINEL_TLS and the like) and hands them over as values.
DECIDERS = {ROOT / "app" / "shared" / "topology.py", ROOT / "app" / "shared" / "settings.py"}


def sources() -> list[Path]:
    files = [*(ROOT / "app").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
    return sorted(path for path in files if path not in DECIDERS)


def topology_questions(path: Path, root: Path = ROOT) -> list[str]:
    """Every place that branches on the topology: a condition naming a cluster or Sentinel,
    an isinstance/issubclass on a Redis client or topology type, a match on one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        tests: list[ast.expr] = []
        if isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert):
            tests.append(node.test)
        elif isinstance(node, ast.comprehension):
            tests += node.ifs
        elif isinstance(node, ast.match_case):
            tests.append(node.pattern)  # type: ignore[arg-type]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("isinstance", "issubclass") \
                and len(node.args) == 2 and TOPOLOGY_TYPES.search(ast.unparse(node.args[1])):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
        for test in tests:
            if TOPOLOGY_WORDS.search(ast.unparse(test)):
                found.append(f"{path.relative_to(root)}:{test.lineno}: {ast.unparse(test)}")
    return found


def test_no_code_outside_the_topology_module_asks_which_topology_it_runs_on():
    files = sources()

    assert len(files) > 30 and ROOT / "app" / "worker" / "worker.py" in files
    assert [question for path in files for question in topology_questions(path)] == []


def test_the_walk_finds_the_questions_it_forbids(tmp_path):
    """The check above can fail: it flags each form of the question."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "if settings.redis_cluster:\n    pass\n"
        "x = 1 if settings.redis_sentinels else 2\n"
        "y = isinstance(client, redis.RedisCluster)\n"
        "z = [s for s in streams if not cluster]\n"
    )

    questions = sorted(topology_questions(sample, tmp_path), key=lambda q: int(q.split(":")[1]))

    assert [q.split(": ", 1)[1] for q in questions] == [
        "settings.redis_cluster", "settings.redis_sentinels", "isinstance(client, redis.RedisCluster)", "not cluster"]


@pytest.mark.parametrize(("environment", "kind", "hash_tagged"), [
    ({}, Standalone, False),
    ({"redis_sentinels": [("s1", 26379), ("s2", 26379)]}, Sentinel, False),
    ({"redis_cluster": True}, Cluster, True),
])
def test_the_settings_build_one_topology(environment, kind, hash_tagged):
    topology = CommonSettings(redis_url="redis://:pw@r:6379/0", **environment).topology

    assert type(topology) is kind
    assert topology.hash_tagged == hash_tagged
    assert "pw" not in topology.describe()


def test_each_topology_names_its_rate_limiter_storage():
    standalone = CommonSettings(redis_url="redis://r:6379/2").topology
    sentinel = CommonSettings(redis_url="redis://r/3", redis_sentinels=[("s1", 26379)],
                              redis_sentinel_master="main").topology
    cluster = CommonSettings(redis_url="rediss://n1:7000", redis_cluster=True).topology

    assert standalone.limiter_storage()[0] == "redis://r:6379/2"
    uri, options = sentinel.limiter_storage()
    assert (uri, options["db"]) == ("redis+sentinel://s1:26379/main", 3)
    uri, options = cluster.limiter_storage()
    assert (uri, options["ssl"]) == ("redis+cluster://n1:7000", True)
    assert [t.describe() for t in (standalone, sentinel, cluster)] == [
        "redis://r:6379/2", "sentinel://s1:26379/main", "cluster+rediss://n1:7000"]



@pytest.mark.system
def test_a_cluster_is_ready_while_any_primary_answers_even_when_the_first_asked_is_silent(cluster_stack,
                                                                                          redis_cluster):
    """Each primary frozen in turn (a partition's silence: the socket open, no answer), so the
    first one asked is, once: the proxy's and the worker's readiness still answer 200 well inside
    their own timeout, because the primaries are asked at once (in the services' gevent runtime)."""
    import signal
    import time

    import requests

    from app.shared.connections import READINESS_PING_TIMEOUT_SECONDS

    proxy, worker = cluster_stack.proxy().wait_ready(), cluster_stack.worker("w").wait_ready()
    for primary in redis_cluster.primaries():
        primary.signal(signal.SIGSTOP)
        try:
            for service in (proxy, worker):
                started = time.monotonic()
                status = requests.get(service.url + "/readyz", timeout=5).status_code
                elapsed = time.monotonic() - started
                # Asked one after another, the silent one alone would take the whole timeout.
                assert (status, elapsed < 0.9 * READINESS_PING_TIMEOUT_SECONDS) == (200, True), \
                    f"{service.name}: {status} after {elapsed:.2f} s with {primary.port} silent"
        finally:
            primary.signal(signal.SIGCONT)
