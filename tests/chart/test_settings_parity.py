"""The chart refuses at install exactly what the services refuse at start.

One list: every cross-variable check of the settings (a `ValueError` raised in a model
validator of app/*/settings.py, or in build_topology of app/shared/topology.py) has a rule
here with values the service refuses and the chart values that render them; both sides must
refuse those and accept the near miss. A new check without a rule fails
test_every_check_of_the_settings_has_a_rule."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from app.proxy.settings import ProxySettings
from app.shared.settings import CommonSettings
from app.worker.settings import WorkerSettings
from tests.chart.test_chart import CHART, _value_args, helm
from tests.support.processes import ROOT

CLUSTER = ("redis.mode=cluster", "redis.external.host=r")
JWKS = {"AUTH_JWT_ENABLED": "true", "AUTH_JWT_JWKS_URL": "https://idp.example/certs", "AUTH_JWT_ISSUER": "i",
        "AUTH_JWT_AUDIENCE": "a", "AUTH_JWT_ALGORITHMS": "RS256"}
JWKS_CHART = ("proxy.auth.enabled=true", "proxy.auth.jwksUrl=https://idp.example/certs", "proxy.auth.issuer=i",
              "proxy.auth.audience=a")


@dataclass(frozen=True)
class Rule:
    check: str  # how the service's message starts
    settings: type[CommonSettings]
    env: dict[str, str]  # what the service refuses
    chart: tuple[str, ...]  # the chart values that would render it
    names: str  # the value the chart's message names
    near_env: dict[str, str] = field(default_factory=dict)  # a near miss both accept (empty: none)
    near_chart: tuple[str, ...] = ()


RULES = [
    Rule("REDIS_CLUSTER and REDIS_SENTINELS exclude each other", WorkerSettings,
         {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://r:6379/0", "REDIS_SENTINELS": "s:26379"},
         (*CLUSTER, "redis.external.sentinel.hosts[0]=s:26379"),
         "redis.external.sentinel"),
    Rule("REDIS_CLUSTER_NODES needs REDIS_CLUSTER=true", WorkerSettings,
         {"REDIS_URL": "redis://r:6379/0", "REDIS_CLUSTER_NODES": "n:7000"},
         ("redis.mode=standalone", "redis.external.host=r", "redis.external.cluster.nodes[0]=n:7000"),
         "nodes",
         {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://r:6379/0", "REDIS_CLUSTER_NODES": "n:7000"},
         (*CLUSTER, "redis.external.cluster.nodes[0]=n:7000")),
    Rule("REDIS_URL must be redis:// or rediss:// with database 0", WorkerSettings,
         {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://r:6379/2"},
         (*CLUSTER, "redis.external.db=2"), "redis.external.db",
         {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://r:6379/0"}, (*CLUSTER, "redis.external.db=0")),
    Rule("REQUEST_STREAM must not contain { or }", WorkerSettings,
         {"REQUEST_STREAM_SHARDS": "2", "REQUEST_STREAM": "jobs{x}"},
         ("config.requestStreamShards=2", "config.requestStream=jobs{x}"), "config.requestStream",
         {"REQUEST_STREAM_SHARDS": "1", "REQUEST_STREAM": "jobs{x}"},
         ("config.requestStreamShards=1", "config.requestStream=jobs{x}")),
    Rule("READ_BLOCK_MS must be shorter than SHUTDOWN_GRACE_SECONDS", WorkerSettings,
         {"SHUTDOWN_GRACE_SECONDS": "2"}, ("worker.shutdownGraceSeconds=2",), "worker.shutdownGraceSeconds",
         {"SHUTDOWN_GRACE_SECONDS": "3"}, ("worker.shutdownGraceSeconds=3",)),
    Rule("LEASE_RENEW_SECONDS must be at most half of CLAIM_IDLE_SECONDS", WorkerSettings,
         {"CLAIM_IDLE_SECONDS": "30", "LEASE_RENEW_SECONDS": "15.5"},
         ("worker.claimIdleSeconds=30", "worker.leaseRenewSeconds=15.5"), "worker.leaseRenewSeconds",
         {"CLAIM_IDLE_SECONDS": "30", "LEASE_RENEW_SECONDS": "15"},
         ("worker.claimIdleSeconds=30", "worker.leaseRenewSeconds=15")),
    Rule("CONSUMER_EXPIRY_SECONDS must exceed CLAIM_IDLE_SECONDS", WorkerSettings,
         {"CLAIM_IDLE_SECONDS": "300"}, ("worker.claimIdleSeconds=300",), "worker.consumerExpirySeconds",
         {"CLAIM_IDLE_SECONDS": "299"}, ("worker.claimIdleSeconds=299",)),
    Rule("WORKER_TERMINALS must be at least REQUEST_STREAM_SHARDS", WorkerSettings,
         {"REQUEST_STREAM_SHARDS": "6"}, ("config.requestStreamShards=6",), "worker.terminals",
         {"REQUEST_STREAM_SHARDS": "5"}, ("config.requestStreamShards=5",)),
    Rule("AUTH_JWT_ALGORITHMS must be all HS* (shared secret) or all RS*/ES* (public key)", ProxySettings,
         {"AUTH_JWT_ENABLED": "true", "AUTH_JWT_ALGORITHMS": "HS256,RS256", "AUTH_JWT_SECRET": "s" * 32},
         ("proxy.auth.enabled=true", r"proxy.auth.algorithms=HS256\,RS256", "proxy.auth.existingSecret=jwt"),
         "proxy.auth.algorithms",
         {"AUTH_JWT_ENABLED": "true", "AUTH_JWT_ALGORITHMS": "HS256,HS512", "AUTH_JWT_SECRET": "s" * 32},
         ("proxy.auth.enabled=true", r"proxy.auth.algorithms=HS256\,HS512", "proxy.auth.existingSecret=jwt")),
    Rule("AUTH_JWT_ENABLED with HS* algorithms needs AUTH_JWT_SECRET", ProxySettings,
         {"AUTH_JWT_ENABLED": "true"}, ("proxy.auth.enabled=true",), "proxy.auth.existingSecret"),
    Rule("METRICS_PORT must differ from PORT", ProxySettings,
         {"METRICS_PORT": "8080"}, ("proxy.metricsPort=8080",), "proxy.metricsPort",
         {"METRICS_PORT": "8081"}, ("proxy.metricsPort=8081",)),
    Rule("AUTH_JWT_JWKS_URL needs RS*/ES* AUTH_JWT_ALGORITHMS", ProxySettings,
         {**JWKS, "AUTH_JWT_ALGORITHMS": "HS256", "AUTH_JWT_SECRET": "s" * 32},
         (*JWKS_CHART, "proxy.auth.algorithms=HS256"), "proxy.auth.jwksUrl",
         JWKS, (*JWKS_CHART, "proxy.auth.algorithms=RS256")),
    Rule("AUTH_JWT_JWKS_URL and AUTH_JWT_PUBLIC_KEY_FILE exclude each other", ProxySettings,
         {**JWKS, "AUTH_JWT_ALGORITHMS": "RS256", "AUTH_JWT_PUBLIC_KEY_FILE": str(ROOT / "README.md")},
         (*JWKS_CHART, "proxy.auth.algorithms=RS256", "proxy.auth.existingSecret=jwt"), "proxy.auth.existingSecret"),
    Rule("AUTH_JWT_JWKS_URL needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE", ProxySettings,
         {**JWKS, "AUTH_JWT_ALGORITHMS": "RS256", "AUTH_JWT_AUDIENCE": ""},
         (*JWKS_CHART, "proxy.auth.algorithms=RS256", "proxy.auth.audience="), "proxy.auth.issuer"),
    Rule("AUTH_JWT_ENABLED with RS*/ES* algorithms needs AUTH_JWT_PUBLIC_KEY_FILE", ProxySettings,
         {"AUTH_JWT_ENABLED": "true", "AUTH_JWT_ALGORITHMS": "RS256"},
         ("proxy.auth.enabled=true", "proxy.auth.algorithms=RS256"), "proxy.auth.existingSecret"),
]


def service_refusal(monkeypatch: pytest.MonkeyPatch, rule: Rule, env: dict[str, str]) -> str | None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/var/run/prometheus-multiproc")
    try:
        rule.settings()
    except ValidationError as error:
        return str(error)
    return None


def chart_refusal(sets: tuple[str, ...]) -> str | None:
    result = helm("template", "demo", str(CHART), *_value_args([], sets), check=False)
    return result.stderr if result.returncode else None


@pytest.mark.parametrize("rule", RULES, ids=[rule.check[:40] for rule in RULES])
def test_both_refuse_what_the_rule_forbids(monkeypatch, rule):
    refused_by_service = service_refusal(monkeypatch, rule, rule.env)
    refused_by_chart = chart_refusal(rule.chart)

    assert refused_by_service and rule.check in refused_by_service, refused_by_service
    # The schema names a value by its path (/redis/external/db), a template by its name.
    names = (rule.names, "/" + rule.names.replace(".", "/"))
    assert refused_by_chart and any(name in refused_by_chart for name in names), refused_by_chart


@pytest.mark.parametrize("rule", [r for r in RULES if r.near_env], ids=lambda rule: rule.check[:40])
def test_both_accept_the_near_miss(monkeypatch, rule):
    assert service_refusal(monkeypatch, rule, rule.near_env) is None
    assert chart_refusal(rule.near_chart) is None


def _raised_messages(function: ast.FunctionDef) -> list[str]:
    return [ast.literal_eval(node.exc.args[0]) for node in ast.walk(function)
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
            and ast.unparse(node.exc.func) == "ValueError"]


def settings_checks() -> list[str]:
    """The message of every ValueError raised in a model validator of the services' settings,
    and in the topology's builder (the settings build the topology while they validate)."""
    messages = []
    for path in [*sorted((ROOT / "app").glob("*/settings.py")), ROOT / "app" / "shared" / "topology.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if any(d.startswith("model_validator") for d in decorators) or node.name == "build_topology":
                messages += _raised_messages(node)
    return messages


def test_every_check_of_the_settings_has_a_rule():
    checks = settings_checks()

    assert len(checks) >= 10, checks  # the walk found the validators
    assert [c for c in checks if not any(c.startswith(rule.check) for rule in RULES)] == []
