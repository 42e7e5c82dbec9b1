"""The dashboard and the alerts against a real Prometheus scraping real services."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import requests
import yaml

from tests.proxy.test_async import poll, submit
from tests.proxy.test_idempotency import post
from tests.support.load import fire, summary
from tests.support.processes import ROOT, Managed, base_env, free_port, wait_until

pytestmark = pytest.mark.system

DASHBOARD = json.loads((ROOT / "dashboards" / "redis-stream-demo.json").read_text())
RULES = yaml.safe_load((ROOT / "alerts" / "redis-stream-demo.rules.yml").read_text())
VARIABLES = {"$namespace": ".*", "$pod": ".*", "$__rate_interval": "20s"}
METRIC_NAME = re.compile(r"\b((?:weather|flask)_[a-z_]+)\b")


def panel_queries() -> list[tuple[str, str]]:
    queries = []
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def alert_queries() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for group in RULES["groups"] for rule in group["rules"]]


class Prometheus(Managed):
    def __init__(self, workdir, targets: list[str], jobs: dict[str, list[str]] | None = None,
                 labels: dict[str, str] | None = None) -> None:
        """``jobs``: job name to targets, as a Prometheus Operator names them after the
        Service (instead of one job of ``targets``); ``labels`` added to every series."""
        self.port = free_port()
        jobs = jobs or {"redis-stream-demo": targets}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "alerts" / "redis-stream-demo.rules.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts, "labels": labels or {}}]}
                               for job, hosts in jobs.items()],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        argv = [shutil.which("prometheus") or "prometheus", f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"]
        super().__init__(f"prometheus:{self.port}", argv, base_env(), workdir / "prometheus.log")
        self.started = time.time()
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: requests.get(self.url + "/-/ready", timeout=1).status_code == 200, 30,
                   what="prometheus ready")

    def query(self, expr: str) -> dict:
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]


def _paced_load_for_the_picture(proxy, worker, client, seconds: float = 60) -> list:
    """Only when drawing docs/dashboard.png: a minute of traffic with a stall and poison."""
    results, started, index = [], time.monotonic(), 10_000
    stalled = poisoned = False
    while time.monotonic() - started < seconds:
        elapsed = time.monotonic() - started
        if elapsed > seconds / 3 and not stalled:
            worker.signal(signal.SIGSTOP)
            results += fire([proxy.url], count=20, concurrency=20, start=index)
            worker.signal(signal.SIGCONT)
            stalled, index = True, index + 20
        if elapsed > seconds * 2 / 3 and not poisoned:
            for n in range(5):
                client.xadd("weather-requests", {"garbage": f"late-{n}"})
            poisoned = True
        batch = 20 + int(15 * (1 + math.sin(elapsed / 6)))
        results += fire([proxy.url], count=batch, concurrency=8, start=index)
        index += batch
        time.sleep(0.5)
    return results


@pytest.fixture
def observed(stack, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not on PATH; run `make setup` (it installs Debian's prometheus)")
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1", WEB_CONCURRENCY="2")
    worker = stack.worker("w", PROCESSING_DELAY_MS="5-40", WORKER_TERMINALS="4", CLAIM_IDLE_SECONDS="1")
    proxy.wait_ready()
    worker.wait_ready()
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{proxy.metrics_port}", f"127.0.0.1:{worker.metrics_port}"])
    stack.processes.append(prometheus)

    ok = fire([proxy.url], count=200, concurrency=10)
    # A frozen worker makes requests time out (504); poison makes dead letters.
    worker.signal(signal.SIGSTOP)
    timed_out = fire([proxy.url], count=10, concurrency=10, start=1000)
    worker.signal(signal.SIGCONT)
    client = stack.redis.client()
    for index in range(3):
        client.xadd("weather-requests", {"garbage": str(index)})
    more = fire([proxy.url], count=100, concurrency=10, start=2000)
    # Async results stored, read pending and done, one unknown; an Idempotency-Key repeated.
    for accepted in [submit(proxy.url, "respond-async") for _ in range(3)]:
        requests.get(proxy.url + accepted.headers["Location"], timeout=5)
        poll(proxy.url, accepted.headers["Location"])
    requests.get(proxy.url + "/WeatherForecast/requests/" + "0" * 32, timeout=5)
    post(proxy.url, "dashboard-key"), post(proxy.url, "dashboard-key")
    if os.environ.get("RENDER_DASHBOARD"):
        more += _paced_load_for_the_picture(proxy, worker, client)
    print(summary("load", ok + timed_out + more))
    expected_letters = 8 if os.environ.get("RENDER_DASHBOARD") else 3
    wait_until(lambda: client.xlen("weather-requests:dlq") == expected_letters, 10, what="dead letters")
    # Scrapes land on Prometheus's schedule: wait until rates have two samples to work with.
    time.sleep(3)
    wait_until(lambda: not _empty_panel_queries(prometheus), 30, interval=1, what="panel data in Prometheus")
    return proxy, worker, prometheus, timed_out


def _empty_panel_queries(prometheus) -> list[tuple[str, str]]:
    return [(title, expr) for title, expr in panel_queries() if not prometheus.query(expr)["result"]]


def test_every_panel_query_returns_data_and_every_alert_evaluates(observed):
    _, _, prometheus, timed_out = observed
    if os.environ.get("RENDER_DASHBOARD"):
        from tools.render_dashboard import render

        render(prometheus.url, prometheus.started, time.time(), ROOT / os.environ["RENDER_DASHBOARD"])
    assert {r.status for r in timed_out} == {504}

    targets = prometheus.query("up")["result"]
    assert len(targets) == 2 and all(t["value"][1] == "1" for t in targets)
    assert _empty_panel_queries(prometheus) == []
    for _, expr in alert_queries():
        prometheus.query(expr)
    rules = requests.get(prometheus.url + "/api/v1/rules", timeout=5).json()["data"]["groups"][0]["rules"]
    assert len(rules) == len(alert_queries()) and all(rule["health"] == "ok" for rule in rules)

    picture = bool(os.environ.get("RENDER_DASHBOARD"))
    timeouts = float(prometheus.query("sum(weather_proxy_timeouts_total)")["result"][0]["value"][1])
    assert timeouts == 10 or (picture and timeouts >= 10)
    dead = prometheus.query('sum(weather_worker_dead_lettered_total{reason="poison"})')["result"][0]["value"][1]
    assert float(dead) == (8 if picture else 3)
    letters = prometheus.query('max(weather_worker_dead_letter_length_entries)')["result"][0]["value"][1]
    assert float(letters) == (8 if picture else 3)


def test_every_metric_the_dashboard_and_alerts_use_is_exported(observed):
    proxy, worker, _, _ = observed
    exported = requests.get(proxy.metrics_url + "/metrics", timeout=5).text + requests.get(
        worker.metrics_url + "/metrics", timeout=5).text
    sample_names = {line.split("{")[0].split(" ")[0] for line in exported.splitlines() if line and line[0] != "#"}

    used = {name for _, expr in panel_queries() + alert_queries() for name in METRIC_NAME.findall(expr)}

    assert used, "no metric names found in the dashboard and rules"
    assert used - sample_names == set()


def test_promtool_finds_no_problems_in_either_exposition(observed):
    proxy, worker, _, _ = observed
    for url in (proxy.metrics_url, worker.metrics_url):
        exposition = requests.get(url + "/metrics", timeout=5).text
        result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout + result.stderr == "", (url, result.stdout, result.stderr)
