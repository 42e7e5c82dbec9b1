"""The embedded Redis's ACL users (redis.auth.mode acl, the default): the chart renders the
rules of app.shared.acl, the services and KEDA get their own users, and no password is in
a ConfigMap or on a command line."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from tests.chart.test_chart import one, render
from tests.support.processes import ROOT, RedisServer
from tools.redis_acl import rules

PASSWORDS = {"REDIS_ACL_PROXY_PASSWORD": "p1-Secret", "REDIS_ACL_WORKER_PASSWORD": "w2-Secret",  # test values
             "REDIS_ACL_MONITOR_PASSWORD": "m3-Secret", "REDIS_ACL_PROBE_PASSWORD": "p4-Secret",
             "REDIS_ACL_ADMIN_PASSWORD": "a5-Secret"}


def test_the_rules_file_of_the_chart_is_up_to_date():
    result = subprocess.run([sys.executable, "scripts/redis_acl_json.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


def acl_file_made_by_the_pod(configmap: dict, directory) -> str:
    """Runs the Redis pod's start script as the pod would, up to starting Redis."""
    script = configmap["data"]["start.sh"].replace("/etc/redis/users.acl.template", str(directory / "template"))
    script = script.replace("/tmp/users.acl", str(directory / "users.acl"))  # noqa: S108 - the pod's path
    script = script.replace("exec redis-server", "true redis-server")
    (directory / "template").write_text(configmap["data"]["users.acl.template"])
    subprocess.run(["sh", "-c", script], check=True, env={"PATH": os.environ["PATH"], **PASSWORDS})
    return (directory / "users.acl").read_text()


@pytest.mark.parametrize("stream", ["weather-requests", "orders"])
def test_the_pod_makes_the_same_rules_as_the_tool_and_redis_loads_them(tmp_path, stream):
    configmap = one(render("default", f"config.requestStream={stream}"), "ConfigMap", "-redis")

    made = acl_file_made_by_the_pod(configmap, tmp_path)

    expected = [line for line in rules(stream, PASSWORDS) if not line.startswith("#")]
    assert made.splitlines() == expected
    assert all(password not in configmap["data"]["users.acl.template"] for password in PASSWORDS.values())
    server = RedisServer(tmp_path / "redis", acl_file=tmp_path / "users.acl", username="admin",
                         password=PASSWORDS["REDIS_ACL_ADMIN_PASSWORD"])
    try:
        users = {name.decode() if isinstance(name, bytes) else name for name in server.client().acl_users()}
        assert users == {"proxy", "worker", "monitor", "probe", "admin", "default"}
        assert server.client().acl_getuser("default")["enabled"] is False
    finally:
        server.stop()


def test_each_service_and_keda_get_their_own_user_and_no_password_is_in_a_configmap_or_command():
    docs = render("keda")
    secret = one(docs, "Secret", "-redis")
    passwords = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}

    assert set(passwords) == {"redis-password", "proxy-password", "worker-password", "monitor-password",
                              "probe-password", "monitor-username"}
    for component in ("proxy", "worker"):
        [container] = one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert env["REDIS_USERNAME"]["value"] == component
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                                       "key": f"{component}-password"}
    [redis] = one(docs, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"]
    assert redis["command"] == ["sh", "/etc/redis/start.sh"]
    assert "--user probe" in redis["readinessProbe"]["exec"]["command"][-1]
    rendered = "\n".join(str(doc) for doc in docs if doc["kind"] != "Secret")
    for key, password in passwords.items():
        if key != "monitor-username":
            assert password not in rendered, f"{key} appears outside its Secret"


def test_password_mode_keeps_one_password_for_everything():
    docs = render("default", "redis.auth.mode=password")
    [redis] = one(docs, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"]
    [proxy] = one(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]["containers"]

    assert redis["command"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert "start.sh" not in one(docs, "ConfigMap", "-redis")["data"]
    assert set(one(docs, "Secret", "-redis")["data"]) == {"redis-password"}
    assert "REDIS_USERNAME" not in {item["name"] for item in proxy["env"]}


def test_an_external_redis_takes_a_user_per_component_or_one_shared():
    sets = ["redis.external.users.proxy.username=demo-proxy", "redis.external.users.proxy.existingSecret=proxy-user",
            "redis.external.users.monitor.username=demo-monitor",
            "redis.external.users.monitor.existingSecret=monitor-user", "worker.keda.enabled=true"]
    docs = render("external-cluster", *sets)
    containers = {c: one(docs, "Deployment", f"-{c}")["spec"]["template"]["spec"]["containers"][0]
                  for c in ("proxy", "worker")}
    env = {c: {item["name"]: item for item in container["env"]} for c, container in containers.items()}
    auth = one(docs, "TriggerAuthentication", "-worker")["spec"]["secretTargetRef"]

    assert env["proxy"]["REDIS_USERNAME"]["value"] == "demo-proxy"
    assert env["proxy"]["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "proxy-user", "key": "password"}
    # The worker has no user of its own here: the shared one.
    assert env["worker"]["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] != "proxy-user"
    assert {"parameter": "username", "name": "monitor-user", "key": "username"} in auth
