"""The services, the monitor and the rate limiter under the per-component ACL users of
app.shared.acl, loaded into real Redis servers from `python -m tools.redis_acl`: every
flow works, Redis logged no refused command, and what each user must not do is refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis
import requests

from app.shared import contract
from app.shared.acl import FORBIDDEN, users
from tests.chaos.test_poison import POISON
from tests.proxy.test_async import poll, submit
from tests.proxy.test_idempotency import post
from tests.support.cluster import RedisClusterSet
from tests.support.load import fire
from tests.support.processes import RedisServer, wait_until
from tests.support.sentinel import SENTINEL_URL, SentinelSet
from tests.tools.test_monitor import run_monitor
from tools.redis_acl import rules

pytestmark = pytest.mark.system

PASSWORDS = {  # test servers' passwords
    "REDIS_ACL_PROXY_PASSWORD": "proxy-Pa55word",
    "REDIS_ACL_WORKER_PASSWORD": "worker-Pa55word",
    "REDIS_ACL_MONITOR_PASSWORD": "monitor-Pa55word",
    "REDIS_ACL_PROBE_PASSWORD": "probe-Pa55word",
    "REDIS_ACL_ADMIN_PASSWORD": "admin-Pa55word",
}
ADMIN = ("admin", PASSWORDS["REDIS_ACL_ADMIN_PASSWORD"])
STREAM = contract.DEFAULT_REQUEST_STREAM


def credentials(user: str) -> dict[str, str]:
    return {"REDIS_USERNAME": user, "REDIS_PASSWORD": PASSWORDS[f"REDIS_ACL_{user.upper()}_PASSWORD"]}


def acl_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "users.acl"
    path.write_text("\n".join(line for line in rules(STREAM, PASSWORDS) if not line.startswith("#")) + "\n")
    return path


@pytest.fixture
def redis_server(tmp_path):
    """The stack's Redis, with the users loaded and the default user off."""
    server = RedisServer(tmp_path / "redis", acl_file=acl_file(tmp_path / "acl"), username=ADMIN[0],
                         password=ADMIN[1])
    yield server
    server.stop()


def refused_commands(client) -> list[str]:
    return [f"{entry['username']}: {entry['object']} ({entry['reason']})" for entry in client.acl_log()]


def test_every_flow_works_under_its_own_user_and_redis_refused_nothing(stack):
    shards = {"REQUEST_STREAM_SHARDS": "2", "REQUEST_TIMEOUT_SECONDS": "15"}
    proxy = stack.proxy(**shards, **credentials("proxy"))
    limited = stack.proxy(**shards, RATE_LIMIT="3/minute", **credentials("proxy"))
    slow = stack.worker("slow", **shards, PROCESSING_DELAY_MS="5000", CLAIM_IDLE_SECONDS="6",
                        SHUTDOWN_GRACE_SECONDS="5", **credentials("worker"))
    for process in (proxy, limited, slow):
        process.wait_ready()
    client = stack.redis.client()

    # Claiming: the slow worker dies holding entries; another worker takes them over.
    first = fire([proxy.url], count=2, concurrency=2, timeout=1)
    wait_until(lambda: slow.metric("weather_worker_terminals_active") == 2, 10, what="entries in hand")
    slow.signal(signal.SIGKILL)
    slow.wait(10)
    worker = stack.worker("w", **shards, PROCESSING_DELAY_MS="0", CLAIM_IDLE_SECONDS="6",
                          **credentials("worker")).wait_ready()
    wait_until(lambda: worker.metric("weather_worker_claimed_total") >= 2, 20, what="orphans claimed")

    answered = fire([proxy.url], count=20, concurrency=5)
    poison_ids = [client.xadd(f"{STREAM}:{{{contract.shard_tag(0, 2)}}}", fields) for fields, _ in POISON]
    dead_letters = f"{STREAM}:{{{contract.shard_tag(0, 2)}}}{contract.DEAD_LETTER_SUFFIX}"
    wait_until(lambda: client.xlen(dead_letters) == len(poison_ids), 15, what="poison dead-lettered")
    statuses = [limited.ask(f"city-{n}", "x").status_code for n in range(5)]
    accepted = submit(proxy.url, "respond-async")
    result = poll(proxy.url, accepted.headers["Location"])
    waited = submit(proxy.url, "wait=10")
    once = [post(proxy.url, "acl-key").status_code for _ in range(2)]
    wait_until(lambda: worker.metric("weather_worker_queue_depth_entries") == 0
               and worker.metric("weather_worker_redis_up") == 1, 15,
               what=f"housekeeping under the worker user; Redis refused {refused_commands(client)}")
    monitor = run_monitor(stack.redis.url, "--shards", "2", **credentials("monitor"))

    assert [r.error for r in first] == [r.error for r in first if r.error]  # they gave up waiting: fine
    assert [r.status for r in answered] == [200] * 20
    assert statuses[:3] == [200] * 3 and 429 in statuses[3:], "the rate limiter counts under the proxy user"
    assert (accepted.status_code, result.status_code, waited.status_code) == (202, 200, 200), result.text
    assert once == [200, 200]
    assert monitor.returncode == 0, monitor.stderr
    assert "Error" not in monitor.stdout and f"{STREAM}:{{" in monitor.stdout
    assert refused_commands(client) == []
    for process in (proxy, limited, worker):
        assert "NOPERM" not in process.log()


@pytest.mark.parametrize("user", ["proxy", "worker", "monitor", "probe"])
def test_what_each_user_must_not_do_is_refused(redis_server, user):
    client = redis_server.client()
    forbidden = {
        "flushall": ["FLUSHALL"], "flushdb": ["FLUSHDB"], "config": ["CONFIG", "GET", "maxmemory"],
        "keys": ["KEYS", "*"], "shutdown": ["SHUTDOWN"], "acl": ["ACL", "LIST"], "script|flush": ["SCRIPT", "FLUSH"],
        "debug": ["DEBUG", "SLEEP", "0"], "module": ["MODULE", "LIST"],
    }
    assert set(forbidden) == set(FORBIDDEN)
    outside = {"proxy": ["XADD", "other-key", "*", "a", "b"], "worker": ["XADD", "other-key", "*", "a", "b"],
               "monitor": ["XLEN", "other-key"], "probe": ["XLEN", STREAM]}[user]

    for command in [*forbidden.values(), outside]:
        answer = client.execute_command("ACL", "DRYRUN", user, *command)
        assert answer != b"OK", f"{user} may run {command}"
    assert client.execute_command("ACL", "DRYRUN", user, "PING") == b"OK"


def test_a_proxy_cannot_take_requests_and_the_monitor_cannot_write(redis_server):
    client = redis_server.client()
    client.xgroup_create(STREAM, contract.DEFAULT_CONSUMER_GROUP, id="0", mkstream=True)

    def may(user: str, *command: str) -> bool:
        return client.execute_command("ACL", "DRYRUN", user, *command) == b"OK"

    assert may("proxy", "XADD", STREAM, "*", "a", "b")
    assert not may("proxy", "XREADGROUP", "GROUP", "g", "c", "STREAMS", STREAM, ">")
    assert not may("proxy", "XACK", STREAM, "g", "1-0")
    assert may("worker", "XREADGROUP", "GROUP", "g", "c", "STREAMS", STREAM, ">")
    assert may("monitor", "XINFO", "GROUPS", STREAM) and may("monitor", "XPENDING", STREAM, "g")
    for write in (["XADD", STREAM, "*", "a", "b"], ["EXPIRE", STREAM, "10"], ["XACK", STREAM, "g", "1-0"],
                  ["XGROUP", "CREATE", STREAM, "g2", "0"], ["DEL", STREAM], ["SET", f"{STREAM}:x", "1"],
                  ["EVAL", "return 1", "0"]):
        assert not may("monitor", *write), write
    names = {user.name for user in users(STREAM)}
    assert names == {"proxy", "worker", "monitor", "probe"}


def test_a_wrong_password_keeps_a_service_unready_and_names_the_user_not_the_password(stack):
    wrong = "not-the-" + PASSWORDS["REDIS_ACL_WORKER_PASSWORD"]
    proxy = stack.proxy(REDIS_USERNAME="proxy", REDIS_PASSWORD=wrong, REQUEST_TIMEOUT_SECONDS="2")
    worker = stack.worker("w", REDIS_USERNAME="worker", REDIS_PASSWORD=wrong)
    for process, user in ((proxy, "proxy"), (worker, "worker")):
        wait_until(lambda p=process: requests.get(p.url + "/healthz", timeout=1).status_code == 200, 20,
                   what=f"{process.name} up")
        answer = requests.get(process.url + "/readyz", timeout=5)

        assert answer.status_code == 503
        assert answer.json()["detail"] == f"Redis refused the credentials of user {user}"
        wait_until(lambda p=process, u=user: f"refused the credentials of user {u}" in p.log(), 5, what="logged")
        assert wrong not in process.log()
        assert all(password not in process.log() for password in PASSWORDS.values())


def test_a_cluster_serves_under_the_users(tmp_path, request):
    from tests.conftest import Stack, _run_stack

    cluster = RedisClusterSet(tmp_path / "cluster", acl_file=acl_file(tmp_path / "acl"), admin=ADMIN)
    try:
        running = Stack(tmp_path, cluster.nodes[0], **cluster.env(), REQUEST_STREAM_SHARDS="3")
        for stack in _run_stack(running, request):
            proxy = stack.proxy(**credentials("proxy")).wait_ready()
            worker = stack.worker("w", PROCESSING_DELAY_MS="0", **credentials("worker")).wait_ready()
            results = fire([proxy.url], count=30, concurrency=5)
            accepted = [submit(proxy.url, "respond-async") for _ in range(6)]
            polled = [poll(proxy.url, answer.headers["Location"]).status_code for answer in accepted]
            wait_until(lambda w=worker: w.metric("weather_worker_queue_depth_entries") == 0, 15, what="drained")
            monitor = run_monitor(cluster.url, "--shards", "3", REDIS_CLUSTER="true", **credentials("monitor"))

            assert [r.status for r in results] == [200] * 30
            assert polled == [200] * 6
            # Each id names its shard: the six records spread over the shards as the entries do.
            assert len({answer.json()["id"].partition(".")[0] for answer in accepted}) == 3
            assert monitor.returncode == 0 and "Error" not in monitor.stdout, monitor.stdout + monitor.stderr
            assert [line for node in cluster.nodes for line in refused_commands(node.client())] == []
    finally:
        cluster.stop()


def test_sentinel_mode_serves_under_the_users(tmp_path, request):
    from tests.conftest import Stack, _run_stack

    sentinels = SentinelSet(tmp_path / "sentinel", acl_file=acl_file(tmp_path / "acl"), admin=ADMIN)
    try:
        running = Stack(tmp_path, sentinels.primary, **sentinels.env(), REDIS_URL=SENTINEL_URL)
        for stack in _run_stack(running, request):
            proxy = stack.proxy(**credentials("proxy")).wait_ready()
            worker = stack.worker("w", PROCESSING_DELAY_MS="0", **credentials("worker")).wait_ready()
            results = fire([proxy.url], count=30, concurrency=5)
            accepted = [submit(proxy.url, "respond-async") for _ in range(6)]
            polled = [poll(proxy.url, answer.headers["Location"]).status_code for answer in accepted]
            wait_until(lambda w=worker: w.metric("weather_worker_queue_depth_entries") == 0, 15, what="drained")

            assert [r.status for r in results] == [200] * 30
            assert polled == [200] * 6
            assert [line for node in (sentinels.primary, *sentinels.replicas)
                    for line in refused_commands(node.client())] == []
    finally:
        sentinels.stop()


def test_a_restart_from_the_append_only_file_keeps_what_transactions_and_scripts_wrote(tmp_path):
    """Redis replays the AOF's MULTI/EXEC blocks (transactions, scripts' effects) as the default
    user and checks its rights at EXEC: with the default user off and without rights, a restart
    dropped them all (redis/redis#14541; the e2e Redis-pod-replaced test answered 40 s late)."""
    server = RedisServer(tmp_path / "redis", appendonly=True, acl_file=acl_file(tmp_path / "acl"),
                         username=ADMIN[0], password=ADMIN[1])
    try:
        worker = redis.Redis(host="127.0.0.1", port=server.port, **_login("worker"))
        with worker.pipeline(transaction=True) as pipe:
            pipe.xadd(f"{contract.REPLY_STREAM_PREFIX}p1", {"id": "r1"})
            pipe.hset(f"{contract.RESULT_KEY_PREFIX}{{s0}}:abc", "state", "done")
            pipe.execute()
        worker.eval("redis.call('HSET', KEYS[1], 'state', 'queued')", 1, f"{contract.RESULT_KEY_PREFIX}{{s0}}:def")
        time.sleep(1.5)  # appendfsync everysec
        server.signal(signal.SIGKILL)
        server.wait(10)
        server.restart()
        wait_until(lambda: server.client().ping(), 20, what="redis back from its AOF")
        admin = server.client()
        assert admin.xlen(f"{contract.REPLY_STREAM_PREFIX}p1") == 1
        assert admin.hget(f"{contract.RESULT_KEY_PREFIX}{{s0}}:abc", "state") == b"done"
        assert admin.hget(f"{contract.RESULT_KEY_PREFIX}{{s0}}:def", "state") == b"queued"
        assert "CRITICAL" not in server.log()
        # Its rights serve only the replay: nobody logs in as the default user.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        with pytest.raises(redis.AuthenticationError, match="disabled"):
            redis.Redis(host="127.0.0.1", port=server.port, username="default", password="").ping()
    finally:
        server.stop()


def _login(user: str) -> dict[str, str]:
    login = credentials(user)
    return {"username": login["REDIS_USERNAME"], "password": login["REDIS_PASSWORD"]}
