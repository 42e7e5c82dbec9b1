"""Both services against a Redis that requires a password (REDIS_PASSWORD)."""

from __future__ import annotations

import time

import pytest
import requests

from app.shared.acl import shared_user
from app.shared.contract import DEFAULT_REQUEST_STREAM
from tests.support.processes import RedisServer, wait_until

pytestmark = pytest.mark.system

PASSWORD = "s3cret-Pa55word"  # noqa: S105 - a test server's password


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    yield server
    server.stop()


def test_services_authenticate_with_redis_password(stack):
    proxy = stack.proxy(REDIS_PASSWORD=PASSWORD, REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    stack.worker("w", REDIS_PASSWORD=PASSWORD, PROCESSING_DELAY_MS="0").wait_ready()

    assert proxy.ask("Oslo", "Norway").status_code == 200


def test_wrong_password_fails_readiness_without_printing_it(stack):
    wrong = "not-the-" + PASSWORD
    proxy = stack.proxy(REDIS_PASSWORD=wrong, REQUEST_TIMEOUT_SECONDS="2")
    worker = stack.worker("w", REDIS_PASSWORD=wrong, PROCESSING_DELAY_MS="0")
    wait_until(lambda: requests.get(proxy.url + "/healthz", timeout=1).status_code == 200, 20, what="proxy up")
    wait_until(lambda: requests.get(worker.url + "/healthz", timeout=1).status_code == 200, 20, what="worker up")
    time.sleep(1)

    assert requests.get(proxy.url + "/readyz", timeout=5).status_code == 503
    assert requests.get(worker.url + "/readyz", timeout=5).status_code == 503
    assert proxy.ask("Oslo", "Norway").status_code == 503
    for process in (proxy, worker):
        assert wrong not in process.log()
        assert PASSWORD not in process.log()


# One user for both services (a managed Redis with a single user): app.shared.acl's shared user.
ACL_USER = "stream-demo"
ACL_PASSWORD = "acl-Pa55word"  # noqa: S105 - a test server's password
ACL_RULES = shared_user(DEFAULT_REQUEST_STREAM, ACL_USER).rule(ACL_PASSWORD).removeprefix("user ")


@pytest.fixture
def acl_redis(tmp_path):
    server = RedisServer(tmp_path / "acl-redis", password=PASSWORD, extra_args=["--user", *ACL_RULES.split()])
    yield server
    server.stop()


def test_services_work_as_a_least_privilege_acl_user(stack, acl_redis):
    env = {"REDIS_USERNAME": ACL_USER, "REDIS_PASSWORD": ACL_PASSWORD}
    proxy = stack.proxy(REDIS_URL=acl_redis.url, REQUEST_TIMEOUT_SECONDS="10", **env)
    worker = stack.worker("acl", REDIS_URL=acl_redis.url, PROCESSING_DELAY_MS="0", **env)
    proxy.wait_ready()
    worker.wait_ready()

    assert proxy.ask("Oslo", "Norway").status_code == 200
    stack.redis.client().ping()  # the default user still works for the test itself
    wait_until(lambda: worker.metric("weather_worker_queue_depth_entries") == 0 and
               worker.metric("weather_worker_redis_up") == 1, 15, what="worker housekeeping as the ACL user")
    for process in (proxy, worker):
        assert "NOPERM" not in process.log()
    assert acl_redis.client().acl_log() == [], "Redis refused a command of the shared user"
