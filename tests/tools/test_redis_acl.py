"""python -m tools.redis_acl: the rules an operator loads into an external Redis."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import ROOT

# ruff: noqa: S106 - test passwords

PASSWORDS = {"REDIS_ACL_PROXY_PASSWORD": "p-Secret1", "REDIS_ACL_WORKER_PASSWORD": "w-Secret2",  # test values
             "REDIS_ACL_MONITOR_PASSWORD": "m-Secret3"}


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.redis_acl", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={"PATH": os.environ["PATH"], **env})


def test_it_prints_one_user_per_component_with_hashed_passwords_for_the_request_stream():
    result = run(REQUEST_STREAM="orders", **PASSWORDS)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("user ")] == ["proxy", "worker", "monitor"]
    assert all(password not in result.stdout for password in PASSWORDS.values())
    assert "~orders:*" in lines[0] and "weather-requests" not in result.stdout
    assert lines[-1].startswith("# the default user is left as it is")


def test_an_admin_password_adds_the_admin_and_turns_the_default_user_off():
    result = run(REDIS_ACL_ADMIN_PASSWORD="a-Secret4", REDIS_ACL_PROBE_PASSWORD="pr-Secret5", **PASSWORDS)

    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["proxy", "worker", "monitor", "probe", "admin", "default"]
    assert lines[-1].startswith("user default off ")  # with its rights: the AOF's MULTI/EXEC replay needs them
    assert "+@all" in lines[-2] and "allkeys" in lines[-2]


def test_a_missing_password_is_named_and_nothing_is_printed():
    result = run(REDIS_ACL_PROXY_PASSWORD="p", REDIS_ACL_MONITOR_PASSWORD="m")

    assert result.returncode != 0 and result.stdout == ""
    assert "REDIS_ACL_WORKER_PASSWORD is not set" in result.stderr


def test_one_shared_user_for_a_redis_that_has_only_one():
    result = run("--shared", "demo", REDIS_ACL_SHARED_PASSWORD="s-Secret6")

    [line] = result.stdout.splitlines()
    assert line.startswith("user demo reset on #") and "+xreadgroup" in line and "+xread " in line
    assert "s-Secret6" not in line
