"""The Helm chart, rendered by the real helm and checked offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.proxy.settings import ProxySettings
from app.shared import contract
from app.worker.settings import WorkerSettings
from tests.support.processes import ROOT

CHART = ROOT / "charts" / "redis-stream-demo"
HELM = ROOT / ".tools" / "helm"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
CRD_VALIDATORS = ROOT / ".tools" / "crd-validators" / "node_modules"
PROFILES_DIR = Path(__file__).parent / "profiles"
PROFILES = {
    "default": [],
    "prod": [CHART / "values-prod.yaml"],
    "external-redis-tls": [PROFILES_DIR / "external-redis-tls.yaml"],
    "keda": [PROFILES_DIR / "keda.yaml"],
    "networkpolicy-off": [PROFILES_DIR / "networkpolicy-off.yaml"],
    "ingress": [PROFILES_DIR / "ingress.yaml"],
    "ci": [ROOT / "ci" / "values-ci.yaml"],
    "auth": [PROFILES_DIR / "auth.yaml"],
    "external-sentinel": [PROFILES_DIR / "external-sentinel.yaml"],
    "external-cluster": [PROFILES_DIR / "external-cluster.yaml"],
}
KUBERNETES_MINORS = [f"1.{minor}.0" for minor in range(29, 36)]
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
# Read by prometheus_client itself, not by the settings objects.
LIBRARY_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR"}


@pytest.fixture(scope="session", autouse=True)
def _helm_installed() -> None:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing; run `make setup` (it installs helm into .tools/)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check, timeout=120)


def _value_args(files: list[Path], sets: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for file in files:
        args += ["-f", str(file)]
    for item in sets:
        args += ["--set", item]
    return args


@cache
def render(profile: str = "default", *sets: str) -> tuple[dict, ...]:
    result = helm("template", "demo", str(CHART), "--namespace", "weather",
                  *_value_args(PROFILES[profile], sets))
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def kinds(docs: tuple[dict, ...], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: tuple[dict, ...], kind: str, name_suffix: str) -> dict:
    [found] = [doc for doc in kinds(docs, kind) if doc["metadata"]["name"].endswith(name_suffix)]
    return found


def pod_specs(docs: tuple[dict, ...]) -> list[tuple[str, dict]]:
    specs = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]))
        elif doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc))
    return specs


# -- lint and schema validation ---------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(profile):
    result = helm("lint", "--strict", str(CHART), *_value_args(PROFILES[profile], ()), check=False)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("version", KUBERNETES_MINORS)
def test_manifests_validate_strictly(profile, version):
    for doc in render(profile):
        if doc["kind"] in CUSTOM_KINDS:
            continue  # not core kinds: validated against their CRD schemas below
        kubernetes_validate.validate(doc, version, strict=True)


def validate_custom_resources(docs: list[dict]) -> list[dict]:
    """Each document's {kind, name, error}, judged by the validators @kubernetes-models generates
    from the CRD schemas (types, patterns, enums, required fields; not unknown fields)."""
    result = subprocess.run(["node", str(Path(__file__).parent / "custom_resources.mjs"), str(CRD_VALIDATORS)],
                            input=json.dumps(docs), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_custom_resources_of_every_profile_match_their_crd_schemas():
    docs = [doc for profile in PROFILES for doc in render(profile) if doc["kind"] in CUSTOM_KINDS]

    results = validate_custom_resources(docs)

    assert [r for r in results if r["error"]] == []
    # Every kind was judged, so a profile change cannot make this pass by rendering none.
    assert {r["kind"] for r in results} == CUSTOM_KINDS


def _broken(kind: str, break_it) -> dict:
    profile = "prod" if kind in ("ServiceMonitor", "PrometheusRule") else "keda"
    doc = json.loads(json.dumps(one(render(profile), kind, "")))
    break_it(doc["spec"])
    return doc


WRONG_FIELDS = {
    "ServiceMonitor": lambda spec: spec["endpoints"][0].update(port=9100),  # a port name, not a number
    "PrometheusRule": lambda spec: spec["groups"][0]["rules"][0].update({"for": "5 minutes"}),
    "ScaledObject": lambda spec: spec.update(minReplicaCount="one"),
    "TriggerAuthentication": lambda spec: spec["secretTargetRef"][0].pop("key"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_FIELDS))
def test_a_wrong_field_fails_its_crd_schema(kind):
    [result] = validate_custom_resources([_broken(kind, WRONG_FIELDS[kind])])

    assert result["error"], f"the broken {kind} passed"


@pytest.mark.parametrize(("sets", "complaint"), [
    (["proxy.replicas=three"], "/proxy/replicas"),
    (["replicaz=3"], "replicaz"),
    (["proxy.replicaz=3"], "replicaz"),
    (["worker.terminals=0"], "/worker/terminals"),
    (["config.logLevel=LOUD"], "/config/logLevel"),
    (["redis.appendfsync=sometimes"], "/redis/appendfsync"),
    (["proxy.image.digest=latest"], "/proxy/image/digest"),
    (["config.redisWaitReplicas=-1"], "/config/redisWaitReplicas"),
    (["redis.external.sentinel.hosts[0]=no-port"], "/redis/external/sentinel/hosts/0"),
    (["redis.mode=sentinel"], "/redis/external/sentinel"),
    (["redis.mode=sentinel", "redis.external.sentinel.hosts[0]=s:26379", "redis.external.cluster.nodes[0]=n:6379"],
     "/redis/external/cluster/nodes"),
    (["redis.mode=cluster", "redis.external.host=r", "redis.external.db=2"], "/redis/external/db"),
    (["redis.mode=standalone"], "'anyOf' failed"),
    (["redis.mode=embedded", "redis.external.host=r"], "/redis/external/host"),
    (["redis.mode=replicated"], "/redis/mode"),
    (["config.requestStreamShards=0"], "/config/requestStreamShards"),
    (["config.requestStreamShards=65"], "/config/requestStreamShards"),
    (["redis.external.cluster.nodes[0]=no-port"], "/redis/external/cluster/nodes/0"),
])
def test_schema_rejects_bad_values(sets, complaint):
    result = helm("lint", "--strict", str(CHART), *_value_args([], tuple(sets)), check=False)

    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


@pytest.mark.parametrize("old", [
    ["redis.enabled=false"],
    ["redis.external.enabled=true", "redis.external.host=r"],
    ["redis.external.sentinel.enabled=true", "redis.external.sentinel.hosts[0]=s:26379"],
    ["redis.mode=cluster", "redis.external.host=r", "redis.external.cluster.enabled=true"],
])
def test_values_of_the_old_shape_are_refused_naming_redis_mode(old):
    result = helm("template", "demo", str(CHART), *_value_args([], tuple(old)), check=False)

    assert result.returncode != 0
    assert "were replaced by redis.mode in chart 1.0.0" in result.stderr


def test_numbers_are_taken_where_users_type_numbers():
    config = one(render("default", "worker.processingDelayMs=1000"), "ConfigMap", "-worker")["data"]

    assert config["PROCESSING_DELAY_MS"] == "1000"
    assert one(render("default"), "ConfigMap", "-worker")["data"]["PROCESSING_DELAY_MS"] == "100-500"


def test_a_password_in_the_redis_url_is_refused():
    sets = ("redis.mode=standalone", "redis.external.url=redis://app:s3cret@redis.example:6379/0")
    refused = helm("template", "demo", str(CHART), *_value_args([], sets), check=False)
    without = render("default", "redis.mode=standalone", "redis.external.url=redis://redis.example:6379/0")

    assert refused.returncode != 0 and "redis.external.url must not hold credentials" in refused.stderr
    assert "s3cret" not in refused.stderr
    assert one(without, "ConfigMap", "-proxy")["data"]["REDIS_URL"] == "redis://redis.example:6379/0"


def test_keda_scales_to_zero_when_the_first_request_can_wait_for_it():
    scaled = one(render("keda", "worker.keda.minReplicaCount=0"), "ScaledObject", "-worker")["spec"]
    too_slow = helm("template", "demo", str(CHART), "-f", str(PROFILES["keda"][0]), "--set",
                    "worker.keda.minReplicaCount=0", "--set", "worker.keda.pollingInterval=30", check=False)

    assert scaled["minReplicaCount"] == 0
    assert all(trigger["metadata"]["activationLagCount"] == "0" for trigger in scaled["triggers"]
               if trigger["type"] != "prometheus")
    assert too_slow.returncode != 0 and "worker.keda.pollingInterval must be shorter" in too_slow.stderr


# -- topology ------------------------------------------------------------------------


def test_replicas_are_left_to_the_autoscalers():
    default, prod, keda = render("default"), render("prod"), render("keda")

    assert one(default, "Deployment", "-proxy")["spec"]["replicas"] == 2
    assert one(default, "Deployment", "-worker")["spec"]["replicas"] == 2
    assert "replicas" not in one(prod, "Deployment", "-proxy")["spec"]
    assert "replicas" not in one(keda, "Deployment", "-worker")["spec"]
    assert "replicas" not in one(render("default", "worker.autoscaling.enabled=true"), "Deployment", "-worker")["spec"]


def test_keda_and_worker_hpa_are_never_rendered_together():
    keda = render("keda")

    assert kinds(keda, "ScaledObject")
    assert not [hpa for hpa in kinds(keda, "HorizontalPodAutoscaler") if hpa["metadata"]["name"].endswith("-worker")]
    both = helm("template", "demo", str(CHART), "--set", "worker.keda.enabled=true",
                "--set", "worker.autoscaling.enabled=true", check=False)
    assert both.returncode != 0
    assert "both own the replica count" in both.stderr


def test_hpa_uses_cpu_memory_and_behavior():
    hpa = one(render("prod"), "HorizontalPodAutoscaler", "-proxy")

    assert hpa["apiVersion"] == "autoscaling/v2"
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_pdb_only_when_more_than_one_replica_can_exist():
    assert {p["metadata"]["name"] for p in kinds(render("default"), "PodDisruptionBudget")} == {
        "demo-redis-stream-demo-proxy", "demo-redis-stream-demo-worker"}
    single = render("default", "proxy.replicas=1", "worker.replicas=1")
    assert kinds(single, "PodDisruptionBudget") == []
    single_max = render("keda", "worker.keda.maxReplicaCount=1")
    assert [p["metadata"]["name"] for p in kinds(single_max, "PodDisruptionBudget")] == ["demo-redis-stream-demo-proxy"]


def test_pdb_lets_a_drain_take_a_lone_pod_unless_min_available_is_kept():
    # KEDA or an HPA may leave one worker: minAvailable 1 would block every node drain then.
    for budget in kinds(render("keda"), "PodDisruptionBudget") + kinds(render("prod"), "PodDisruptionBudget"):
        assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"], budget
    kept = one(render("default", "worker.pdb.minAvailable=2"), "PodDisruptionBudget", "-worker")["spec"]
    assert kept["minAvailable"] == 2 and "maxUnavailable" not in kept
    share = one(render("default", "worker.pdb.maxUnavailable=25%"), "PodDisruptionBudget", "-worker")["spec"]
    assert share["maxUnavailable"] == "25%"


def test_grace_periods_outlast_shutdown():
    docs = render("default")
    worker = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    proxy = one(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]
    [worker_container], [proxy_container] = worker["containers"], proxy["containers"]
    config = {**one(docs, "ConfigMap", "-worker")["data"], **one(docs, "ConfigMap", "-proxy")["data"]}
    pre_stop = int(proxy_container["lifecycle"]["preStop"]["exec"]["command"][1])

    assert worker["terminationGracePeriodSeconds"] > float(config["SHUTDOWN_GRACE_SECONDS"])
    assert proxy["terminationGracePeriodSeconds"] > pre_stop + float(config["REQUEST_TIMEOUT_SECONDS"])
    assert worker_container["name"] == "worker"


def test_config_change_rolls_the_pods():
    def checksum(*sets: str) -> str:
        docs = render("default", *sets)
        return one(docs, "Deployment", "-worker")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("worker.terminals=7")


# -- containers ----------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_every_container_is_restricted_and_resourced(profile):
    for name, template in pod_specs(render(profile)):
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert isinstance(pod_context["runAsUser"], int) and pod_context["runAsUser"] > 0, name
        assert pod_context["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["runAsNonRoot"] is True, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            if template.get("kind") != "Pod":  # the helm test pod runs once
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    assert probe in container, f"{name}: {probe}"


def test_service_probes_hit_health_and_readiness():
    for suffix in ("-proxy", "-worker"):
        [container] = one(render("default"), "Deployment", suffix)["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(("suffix", "settings"), [("-proxy", ProxySettings), ("-worker", WorkerSettings)])
@pytest.mark.parametrize("profile", PROFILES)
def test_environment_names_are_the_ones_the_services_read(profile, suffix, settings):
    docs = render(profile)
    read = {name.upper() for name in settings.model_fields} | LIBRARY_VARIABLES
    [container] = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"]
    configmap = one(docs, "ConfigMap", suffix)

    set_by_chart = set(configmap["data"]) | {item["name"] for item in container.get("env", [])}

    assert set_by_chart - read == set()
    assert {ref["configMapRef"]["name"] for ref in container["envFrom"]} == {configmap["metadata"]["name"]}


@pytest.mark.parametrize("profile", ["prod", "external-sentinel", "external-cluster"])
def test_settings_in_the_configmaps_are_valid_for_the_services(monkeypatch, profile):
    docs = render(profile)
    for suffix, settings in (("-proxy", ProxySettings), ("-worker", WorkerSettings)):
        for key, value in one(docs, "ConfigMap", suffix)["data"].items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/var/run/prometheus-multiproc")
        settings()  # raises on any value the service would refuse


# -- redis ---------------------------------------------------------------------------


def container_memory_limit(workload: dict) -> str:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return container["resources"]["limits"]["memory"]


def quantity(text: str) -> float:
    """CPU in cores or memory in MiB, from a Kubernetes quantity."""
    units = {"m": 0.001, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def test_the_readmes_cost_of_the_defaults_is_what_they_request():
    docs = render("default")
    totals = {"requests": [0.0, 0.0], "limits": [0.0, 0.0]}
    for kind, suffix in (("Deployment", "-proxy"), ("Deployment", "-worker"), ("StatefulSet", "-redis")):
        workload = one(docs, kind, suffix)
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for key, (cpu, memory) in totals.items():
                resources = container["resources"][key]
                replicas = workload["spec"].get("replicas", 1)
                totals[key] = [cpu + replicas * quantity(resources["cpu"]),
                               memory + replicas * quantity(resources["memory"])]
    readme = (ROOT / "README.md").read_text()

    assert totals == {"requests": [0.5, 640], "limits": [5.0, 1536]}
    assert "| **total** | 5 | **500m CPU, 640Mi** | **5 CPU, 1.5Gi** | **1Gi** |" in readme


def test_embedded_redis_keeps_an_aof_on_a_pvc_with_a_secret_password():
    docs = render("default")
    statefulset = one(docs, "StatefulSet", "-redis")
    config = one(docs, "ConfigMap", "-redis")["data"]["redis.conf"]
    secret = one(docs, "Secret", "-redis")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]

    assert "appendonly yes" in config and "appendfsync everysec" in config
    # Bounded below its 512Mi limit: a full Redis refuses writes (503) instead of being OOM-killed.
    assert "maxmemory 384mb" in config and "maxmemory-policy noeviction" in config
    assert container_memory_limit(statefulset) == "512Mi"
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    for suffix in ("-proxy", "-worker"):
        [service] = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"]
        password = next(e for e in service["env"] if e["name"] == "REDIS_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        assert one(docs, "ConfigMap", suffix)["data"]["REDIS_URL"] == "redis://demo-redis-stream-demo-redis:6379/0"


def test_external_redis_renders_no_embedded_redis_and_wires_tls():
    docs = render("external-redis-tls")

    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]
    assert kinds(docs, "StatefulSet") == []
    for suffix in ("-proxy", "-worker"):
        assert one(docs, "ConfigMap", suffix)["data"]["REDIS_URL"] == "rediss://redis.example.internal:6380/0"
        spec = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-credentials"
        assert env["REDIS_USERNAME"]["value"] == "stream-demo"
        assert env["REDIS_TLS_CA_FILE"]["value"] == "/etc/redis-tls/ca.crt"
        assert env["REDIS_TLS_CERT_FILE"]["value"] == "/etc/redis-tls/tls.crt"
        assert env["REDIS_TLS_KEY_FILE"]["value"] == "/etc/redis-tls/tls.key"
        assert {"name": "redis-tls", "secret": {"secretName": "redis-ca"}} in spec["volumes"]
    egress = one(docs, "NetworkPolicy", "-worker")["spec"]["egress"]
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in egress[1]["to"]
    assert egress[1]["ports"] == [{"port": 6380, "protocol": "TCP"}]


def test_sentinel_mode_wires_sentinels_their_password_and_durable_writes(monkeypatch):
    docs = render("external-sentinel")
    sentinels = ",".join(f"redis-node-{n}.redis-headless:26379" for n in range(3))

    assert kinds(docs, "StatefulSet") == []
    for suffix, settings_class in (("-proxy", ProxySettings), ("-worker", WorkerSettings)):
        data = one(docs, "ConfigMap", suffix)["data"]
        assert data["REDIS_SENTINELS"] == sentinels
        assert data["REDIS_SENTINEL_MASTER"] == "mymaster"
        assert data["REDIS_WAIT_REPLICAS"] == "1"
        [container] = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "redis-credentials", "key": "sentinel-password"}
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-credentials"
        for key, value in data.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/var/run/prometheus-multiproc")
        parsed = settings_class()
        assert parsed.redis_sentinels == [(f"redis-node-{n}.redis-headless", 26379) for n in range(3)]
    for suffix in ("-proxy", "-worker"):
        egress = one(docs, "NetworkPolicy", suffix)["spec"]["egress"]
        assert {"port": 26379, "protocol": "TCP"} in egress[1]["ports"]
        assert {"port": 6379, "protocol": "TCP"} in egress[1]["ports"]


def lag_triggers(docs: list[dict]) -> list[dict]:
    """The ScaledObject's Redis triggers (the demand trigger is Prometheus's)."""
    return [t for t in one(docs, "ScaledObject", "-worker")["spec"]["triggers"] if t["type"] != "prometheus"]


def with_lanes(streams: list[str]) -> list[str]:
    """Each shard followed by its prompt lane, as the workers read them."""
    return [queue for stream in streams for queue in (stream, contract.prompt_lane(stream))]


def test_keda_uses_the_sentinel_streams_scaler_with_both_passwords():
    docs = render("external-sentinel")
    trigger, lane = lag_triggers(docs)
    auth = one(docs, "TriggerAuthentication", "-worker")

    assert trigger["type"] == lane["type"] == "redis-sentinel-streams"
    assert lane["metadata"]["stream"] == contract.prompt_lane(trigger["metadata"]["stream"])
    assert trigger["metadata"]["addresses"] == ",".join(f"redis-node-{n}.redis-headless:26379" for n in range(3))
    assert trigger["metadata"]["sentinelMaster"] == "mymaster"
    assert "address" not in trigger["metadata"]
    assert {(r["parameter"], r["key"]) for r in auth["spec"]["secretTargetRef"]} == {
        ("password", "redis-password"), ("sentinelPassword", "sentinel-password")}


def test_cluster_mode_names_the_shards_as_the_services_do_with_a_keda_trigger_each(monkeypatch):
    docs = render("external-cluster")
    data = one(docs, "ConfigMap", "-worker")["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = WorkerSettings()
    triggers = lag_triggers(docs)

    assert settings.redis_cluster and settings.request_stream_shards == 6
    assert [t["metadata"]["stream"] for t in triggers] == with_lanes(settings.request_streams)
    assert {t["type"] for t in triggers} == {"redis-cluster-streams"}
    # The autoscaler follows the busiest trigger: each shard's target is a sixth of the lag target.
    assert {t["metadata"]["lagCount"] for t in triggers} == {"9"}
    assert all("databaseIndex" not in t["metadata"] and t["metadata"]["enableTLS"] == "true" for t in triggers)
    assert triggers[0]["metadata"]["addresses"].count(":") == 3
    egress = one(docs, "NetworkPolicy", "-worker")["spec"]["egress"][1]
    assert {"port": 6380, "protocol": "TCP"} in egress["ports"]


def test_standalone_shards_get_a_redis_streams_trigger_each():
    docs = render("keda", "config.requestStreamShards=3")
    triggers = lag_triggers(docs)

    assert [t["metadata"]["stream"] for t in triggers] == with_lanes(
        contract.request_streams("weather-requests", 3, False))
    assert {t["type"] for t in triggers} == {"redis-streams"}
    assert one(docs, "ConfigMap", "-proxy")["data"]["REQUEST_STREAM_SHARDS"] == "3"


def test_keda_scales_on_demand_from_prometheus_unless_told_to_scale_on_lag_alone():
    demand = one(render("keda"), "ScaledObject", "-worker")["spec"]["triggers"]
    lag = one(render("keda", "worker.keda.scaleOn=lag"), "ScaledObject", "-worker")["spec"]["triggers"]
    refused = helm("template", "demo", str(CHART), "-f", str(PROFILES["keda"][0]), "--set",
                   "worker.keda.scaleOn=cpu", check=False)

    [prometheus] = [t for t in demand if t["type"] == "prometheus"]
    query = prometheus["metadata"]["query"]
    assert "weather_proxy_admitted_total" in query and "weather_proxy_shed_total" in query
    assert "weather_worker_drain_per_second" in query and 'job="demo-redis-stream-demo-proxy"' in query
    assert prometheus["metadata"]["threshold"] == "0.8"
    assert prometheus["metadata"]["serverAddress"].startswith("http")
    assert len(demand) == len(lag) + 1 and all(t["type"] != "prometheus" for t in lag)
    assert refused.returncode != 0 and "scaleOn" in refused.stderr


def test_while_the_shard_count_changes_keda_watches_both_sets():
    docs = render("keda", "config.requestStreamShards=6", "worker.terminals=6",
                  "worker.keda.previousRequestStreamShards=1")
    triggers = lag_triggers(docs)

    new, old = contract.request_streams("weather-requests", 6, False), ["weather-requests"]
    assert [t["metadata"]["stream"] for t in triggers] == with_lanes(new + old)
    # Each set's shards share its lag target: the unsharded stream keeps the whole target.
    assert [t["metadata"]["lagCount"] for t in triggers] == ["9"] * 12 + ["50"] * 2


def test_shard_tags_file_matches_the_services():
    result = subprocess.run([sys.executable, "scripts/shard_tags.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


# -- network policies ----------------------------------------------------------------


def _selects(policy: dict, labels: dict) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "networkpolicy-off"])
def test_every_pod_is_selected_by_a_network_policy(profile):
    docs = render(profile)
    policies = kinds(docs, "NetworkPolicy")
    for name, template in pod_specs(docs):
        labels = template["metadata"]["labels"]
        assert any(_selects(policy, labels) for policy in policies), name


def test_network_policy_off_renders_none():
    assert kinds(render("networkpolicy-off"), "NetworkPolicy") == []


def test_redis_accepts_only_proxy_and_worker_pods():
    policy = one(render("default"), "NetworkPolicy", "-redis")
    [rule] = policy["spec"]["ingress"]

    components = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]}
    assert components == {"proxy", "worker"}
    assert policy["spec"]["egress"] == []
    keda_rule = one(render("keda"), "NetworkPolicy", "-redis")["spec"]["ingress"][0]
    assert any("namespaceSelector" in peer for peer in keda_rule["from"])


def test_metrics_only_from_monitoring_and_the_proxy_api_open_by_default():
    docs = render("default")
    worker_rule = one(docs, "NetworkPolicy", "-worker")["spec"]["ingress"][0]
    api_rule, metrics_rule = one(docs, "NetworkPolicy", "-proxy")["spec"]["ingress"]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

    assert worker_rule["from"] == [monitoring]
    assert api_rule["ports"] == [{"port": "http", "protocol": "TCP"}] and "from" not in api_rule
    assert metrics_rule == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [monitoring]}
    limited = one(render("default", "networkPolicy.proxyFrom[0].podSelector.matchLabels.role=frontend"),
                  "NetworkPolicy", "-proxy")["spec"]["ingress"][0]
    assert {"podSelector": {"matchLabels": {"role": "frontend"}}} in limited["from"]


def test_an_ingress_reaches_the_api_port_only_and_no_docs_unless_asked():
    docs = render("default", "proxy.ingress.enabled=true", "proxy.ingress.hosts[0].host=api.example.com",
                  "proxy.ingress.hosts[0].paths[0].path=/", "proxy.ingress.hosts[0].paths[0].pathType=Prefix")
    ingress = one(docs, "Ingress", "-proxy")
    service = one(docs, "Service", "-proxy")
    [container] = one(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]["containers"]
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    container_ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = one(docs, "ConfigMap", "-proxy")["data"]

    # What the Ingress reaches: the Service's http port, i.e. the container's API port.
    assert backends and all(backend["port"] == {"name": "http"} for backend in backends)
    assert container_ports[ports["http"]["targetPort"]] == int(config["PORT"])
    # /metrics is on another container port, which no Ingress backend names.
    assert container_ports["metrics"] == int(config["METRICS_PORT"]) != int(config["PORT"])
    assert config["DOCS_ENABLED"] == "false"
    assert one(render("default"), "ConfigMap", "-proxy")["data"]["DOCS_ENABLED"] == "true"
    always = render("default", "proxy.ingress.enabled=true", "proxy.docs.serve=always")
    assert one(always, "ConfigMap", "-proxy")["data"]["DOCS_ENABLED"] == "true"


# -- custom resources and the dashboard ---------------------------------------------


def test_service_monitor_and_rules_have_what_their_operator_requires():
    docs = render("prod")
    monitor = one(docs, "ServiceMonitor", "")
    rule = one(docs, "PrometheusRule", "")

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"]
    # Both the proxy's and the workers' Services name their metrics port "metrics".
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    for suffix in ("-proxy", "-worker"):
        assert "metrics" in {p["name"] for p in one(docs, "Service", suffix)["spec"]["ports"]}
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    for item in (r for g in groups for r in g["rules"]):
        assert item["alert"] and item["expr"]
        assert item["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(item["annotations"])
    with open(ROOT / "alerts" / "redis-stream-demo.rules.yml") as plain:
        assert groups == yaml.safe_load(plain)["groups"]


def test_scaled_object_scales_the_worker_on_the_group_lag():
    docs = render("keda")
    scaled = one(docs, "ScaledObject", "-worker")
    auth = one(docs, "TriggerAuthentication", "-worker")
    trigger, lane = lag_triggers(docs)

    assert lane["metadata"]["stream"] == "weather-requests:urgent"
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment", "-worker")["metadata"]["name"]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "weather-requests"
    assert trigger["metadata"]["consumerGroup"] == "weather-workers"
    assert trigger["metadata"]["address"] == "demo-redis-stream-demo-redis.weather.svc:6379"
    assert {"lagCount", "activationLagCount"} <= set(trigger["metadata"])
    assert all(isinstance(v, str) for v in trigger["metadata"].values())
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = one(docs, "Secret", "-redis")["metadata"]["name"]
    # KEDA reads the queue as the read-only monitor user.
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "username", "name": secret, "key": "monitor-username"},
        {"parameter": "password", "name": secret, "key": "monitor-password"},
    ]


def test_dashboard_configmap_holds_the_dashboard_of_the_repository():
    configmap = one(render("default"), "ConfigMap", "-dashboard")

    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "Redis Stream Demo"
    shipped = json.loads(configmap["data"]["redis-stream-demo.json"])
    assert shipped == json.loads((ROOT / "dashboards" / "redis-stream-demo.json").read_text())


def test_ingress_routes_to_the_proxy_service():
    docs = render("ingress")
    ingress = one(docs, "Ingress", "-proxy")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]

    assert backend == {"name": one(docs, "Service", "-proxy")["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "weather-example-com-tls"
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_helm_test_pod_posts_through_the_proxy_service():
    pod = one(render("default"), "Pod", "-test")

    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert "http://demo-redis-stream-demo-proxy:80/WeatherForecast/city" in script


# -- docs and checkov ----------------------------------------------------------------


def test_the_values_examples_of_the_chart_readme_render(tmp_path):
    readme = (CHART / "README.md").read_text()
    examples = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:]]

    assert examples
    for number, example in enumerate(examples):
        values = tmp_path / f"example-{number}.yaml"
        values.write_text(example)
        result = helm("template", "demo", str(CHART), "-f", str(values), check=False)
        assert result.returncode == 0, example + result.stderr


def test_values_table_in_the_chart_readme_is_current():
    result = subprocess.run([sys.executable, "scripts/chart_values_table.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


def test_every_values_block_opens_with_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        is_top_level_key = line and not line.startswith((" ", "#")) and line.endswith(":")
        if is_top_level_key:
            assert lines[index - 1].startswith("#"), f"values.yaml:{index + 1} {line}"


def test_checkov_finds_nothing():
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "PATH": f"{HELM.parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [str(CHECKOV), "-d", str(CHART), "--framework", "helm", "--skip-download", "--compact", "--quiet",
         "--config-file", str(CHART / ".checkov.yaml"), "--output", "json"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    report = json.loads(result.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]

    assert summary["failed"] == 0, result.stdout[-3000:]
    assert summary["passed"] > 100
    assert summary["parsing_errors"] == 0


def test_auth_wires_the_key_from_a_secret():
    rs = one(render("auth"), "Deployment", "-proxy")["spec"]["template"]["spec"]
    hs = one(render("default", "proxy.auth.enabled=true", "proxy.auth.existingSecret=jwt"), "Deployment",
             "-proxy")["spec"]["template"]["spec"]
    config = one(render("auth"), "ConfigMap", "-proxy")["data"]

    assert config["AUTH_JWT_ENABLED"] == "true" and config["AUTH_JWT_ALGORITHMS"] == "RS256"
    assert config["AUTH_JWT_AUDIENCE"] == "weather-api"
    rs_env = {e["name"]: e for e in rs["containers"][0]["env"]}
    assert rs_env["AUTH_JWT_PUBLIC_KEY_FILE"]["value"] == "/etc/jwt/jwt-public-key.pem"
    assert {"name": "jwt-public-key", "mountPath": "/etc/jwt", "readOnly": True} in rs["containers"][0]["volumeMounts"]
    hs_env = {e["name"]: e for e in hs["containers"][0]["env"]}
    assert hs_env["AUTH_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "jwt", "key": "jwt-secret"}
    missing = helm("template", "demo", str(CHART), "--set", "proxy.auth.enabled=true", check=False)
    assert missing.returncode != 0 and "proxy.auth.existingSecret is required" in missing.stderr


def _notes(*sets: str) -> str:
    args = [arg for value in sets for arg in ("--set", value)]
    return helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "weather", *args).stdout


def test_install_warns_when_the_alerts_would_have_no_metrics_to_read():
    assert "Warning: the alerts are installed" in _notes("monitoring.prometheusRule.enabled=true")
    assert "Warning" not in _notes("monitoring.prometheusRule.enabled=true", "monitoring.serviceMonitor.enabled=true")
    assert "Warning" not in _notes()
