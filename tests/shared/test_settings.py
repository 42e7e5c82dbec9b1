"""A bad variable stops either service with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import BIN, ROOT, base_env, free_port

PROXY_CASES = [
    ("PORT", "eighty"),
    ("PORT", "70000"),
    ("REQUEST_TIMEOUT_SECONDS", "0"),
    ("REQUEST_TIMEOUT_SECONDS", "soon"),
    ("WEB_CONCURRENCY", "0"),
    ("WORKER_CONNECTIONS", "-1"),
    ("REDIS_URL", "http://localhost:6379"),
    ("REDIS_URL", "redis://"),
    ("LOG_LEVEL", "LOUD"),
    ("REQUEST_STREAM", "has space"),
    ("ACCESS_LOG", "maybe"),
    ("REDIS_RETRY_MAX_TRIES", "0"),
    ("REDIS_RETRY_MAX_SECONDS", "-1"),
    ("CIRCUIT_FAILURE_THRESHOLD", "0"),
    ("CIRCUIT_RESET_SECONDS", "never"),
    ("REDIS_SENTINELS", "sentinel-without-port"),
    ("REDIS_SENTINELS", "host:99999"),
    ("REDIS_SENTINEL_TLS", "maybe"),
    ("REDIS_WAIT_REPLICAS", "-1"),
    ("REDIS_WAIT_TIMEOUT_MS", "0"),
    ("REDIS_CLUSTER", "maybe"),
    ("REQUEST_STREAM_SHARDS", "0"),
    ("REQUEST_STREAM_SHARDS", "65"),
]
WORKER_CASES = [
    ("WORKER_TERMINALS", "0"),
    ("WORKER_TERMINALS", "five"),
    ("PROCESSING_DELAY_MS", "500-100"),
    ("PROCESSING_DELAY_MS", "fast"),
    ("METRICS_PORT", "0"),
    ("SHUTDOWN_GRACE_SECONDS", "-1"),
    ("CONSUMER_GROUP", ""),
    ("REQUEST_STREAM", ""),
    ("REDIS_URL", "localhost:6379"),
    ("LOG_LEVEL", "verbose"),
    ("CLAIM_IDLE_SECONDS", "0"),
    ("REDIS_SENTINELS", "a:1,:2"),
    ("REDIS_SENTINEL_MASTER", ""),
    ("REDIS_WAIT_REPLICAS", "many"),
    ("MAX_DELIVERIES", "0"),
    ("CONSUMER_EXPIRY_SECONDS", "x"),
    ("REDIS_RECONNECT_MAX_SECONDS", "0"),
    ("REDIS_RETRY_BASE_SECONDS", "-0.1"),
    ("LEASE_RENEW_SECONDS", "0"),
    ("REDIS_CLUSTER_NODES", "a:b"),
]

# Values that are fine alone but contradict another setting.
WORKER_CONFLICTS = [
    ({"LEASE_RENEW_SECONDS": "3", "CLAIM_IDLE_SECONDS": "5"}, "LEASE_RENEW_SECONDS"),
    ({"REDIS_CLUSTER_NODES": "127.0.0.1:7000"}, "REDIS_CLUSTER_NODES"),
    ({"CLAIM_IDLE_SECONDS": "60", "CONSUMER_EXPIRY_SECONDS": "30"}, "CONSUMER_EXPIRY_SECONDS"),
    ({"READ_BLOCK_MS": "5000", "SHUTDOWN_GRACE_SECONDS": "2"}, "READ_BLOCK_MS"),
    ({"REQUEST_STREAM_SHARDS": "4", "WORKER_TERMINALS": "3"}, "WORKER_TERMINALS"),
    ({"REDIS_CLUSTER": "true", "REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINELS"),
    ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://:hunter2@127.0.0.1:1/3"}, "REDIS_URL"),
    ({"REQUEST_STREAM_SHARDS": "2", "REQUEST_STREAM": "jobs{x}"}, "REQUEST_STREAM"),
]


def _run(argv: list[str], variable: str, value: str) -> subprocess.CompletedProcess[str]:
    env = base_env(PORT=str(free_port()), METRICS_PORT=str(free_port()), REDIS_URL="redis://127.0.0.1:1/0")
    env[variable] = value
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("variable", "value"), PROXY_CASES)
def test_proxy_refuses_to_start(variable, value):
    result = _run([str(BIN / "gunicorn"), "-c", "app/proxy/gunicorn.conf.py"], variable, value)

    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert variable in result.stderr


@pytest.mark.parametrize(("variable", "value"), WORKER_CASES)
def test_worker_refuses_to_start(variable, value):
    result = _run([sys.executable, "-m", "app.worker"], variable, value)

    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert variable in result.stderr


def test_a_bad_redis_url_is_not_echoed():
    result = _run([sys.executable, "-m", "app.worker"], "REDIS_URL", "http://user:hunter2@example")

    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(("env", "named"), WORKER_CONFLICTS)
def test_worker_refuses_contradicting_settings(env, named):
    base = base_env(METRICS_PORT=str(free_port()), **{"REDIS_URL": "redis://127.0.0.1:1/0", **env})
    result = subprocess.run([sys.executable, "-m", "app.worker"], cwd=ROOT, env=base, capture_output=True,
                            text=True, timeout=30)

    assert result.returncode == 2
    assert named in result.stderr
    assert "hunter2" not in result.stderr


PROXY_CONFLICTS = [
    ({"AUTH_JWT_ENABLED": "true"}, "AUTH_JWT_SECRET"),
    ({"AUTH_JWT_ENABLED": "true", "AUTH_JWT_ALGORITHMS": "RS256"}, "AUTH_JWT_PUBLIC_KEY_FILE"),
    ({"AUTH_JWT_ENABLED": "true", "AUTH_JWT_ALGORITHMS": "HS256,RS256", "AUTH_JWT_SECRET": "x"},
     "AUTH_JWT_ALGORITHMS"),
    ({"AUTH_JWT_ALGORITHMS": "none"}, "AUTH_JWT_ALGORITHMS"),
    ({"MAX_INFLIGHT_PER_PROCESS": "0"}, "MAX_INFLIGHT_PER_PROCESS"),
    ({"RATE_LIMIT": "lots"}, "RATE_LIMIT"),
    ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES"),
]


@pytest.mark.parametrize(("env", "named"), PROXY_CONFLICTS)
def test_proxy_refuses_bad_auth_and_limits(env, named):
    base = base_env(PORT=str(free_port()), REDIS_URL="redis://127.0.0.1:1/0", **env)
    result = subprocess.run([str(BIN / "gunicorn"), "-c", "app/proxy/gunicorn.conf.py"], cwd=ROOT, env=base,
                            capture_output=True, text=True, timeout=30)

    assert result.returncode == 2, result.stderr
    assert named in result.stderr
