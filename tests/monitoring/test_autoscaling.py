"""The chart's KEDA ScaledObject scales on demand: its Prometheus query, asked of a real
Prometheus scraping real services through an overload, put through KEDA's formula."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
import yaml

from tests.chart.test_chart import CHART, helm
from tests.monitoring.test_prometheus import Prometheus
from tools.load_runs import run_open_loop

pytestmark = pytest.mark.system

RELEASE, NAMESPACE = "t", "default"


def _scaled_object() -> dict:
    # The offered rate's window shortened from the default minute, so that a test of 40 s
    # sees a window full of overload.
    rendered = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "worker.keda.enabled=true",
                    "--set", "worker.keda.demand.window=20s")
    return next(doc for doc in yaml.safe_load_all(rendered.stdout) if doc and doc["kind"] == "ScaledObject")


def test_under_overload_the_desired_replicas_follow_the_demand_not_the_shortened_lag(stack, tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    worker_values, config = values["worker"], values["config"]
    trigger = next(t for t in _scaled_object()["spec"]["triggers"] if t["type"] == "prometheus")
    query, threshold = trigger["metadata"]["query"], float(trigger["metadata"]["threshold"])

    # One worker as the chart makes it by default; the proxy with the chart's timeout.
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS=str(config["requestTimeoutSeconds"])).wait_ready()
    worker = stack.worker("w", WORKER_TERMINALS=str(worker_values["terminals"]),
                          PROCESSING_DELAY_MS=str(worker_values["processingDelayMs"])).wait_ready()
    low, _, high = str(worker_values["processingDelayMs"]).partition("-")
    capacity = worker_values["terminals"] / ((int(low) + int(high or low)) / 2000)
    prometheus = Prometheus(tmp_path, [], jobs={
        f"{RELEASE}-redis-stream-demo-proxy": [f"127.0.0.1:{proxy.metrics_port}"],
        f"{RELEASE}-redis-stream-demo-worker": [f"127.0.0.1:{worker.metrics_port}"],
    }, labels={"namespace": NAMESPACE})
    try:
        load = threading.Thread(target=lambda: asyncio.run(run_open_loop(
            proxy.url, rate=2.4 * capacity, count=None, timeout=40, duration=40)), daemon=True)
        load.start()
        time.sleep(32)  # asked while the overload lasts, as KEDA polls it

        [demand] = prometheus.query(query)["result"]
        shed = prometheus.query('sum(rate(weather_proxy_shed_total[20s]))')["result"]
        drain = prometheus.query('avg(weather_worker_drain_per_second)')["result"]
        lag = worker.metric("weather_worker_group_lag_entries")
        load.join(timeout=120)
    finally:
        prometheus.stop()
    value = float(demand["value"][1])
    desired = math.ceil(value / threshold)  # KEDA's AverageValue target: ceil(metric / threshold)
    assert shed and float(shed[0]["value"][1]) > 0, "admission was shedding"
    assert 2.0 <= value <= 3.0, (value, drain)  # about 2.4 workers' worth offered
    assert desired >= 3, (value, threshold)
    # The lag trigger alone would not ask for that: admission keeps the backlog short.
    assert math.ceil(lag / worker_values["keda"]["lagCount"]) < 3, lag
