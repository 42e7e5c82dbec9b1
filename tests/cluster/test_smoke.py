"""The installed release serves real requests."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pytest_helm_charts.k8s.deployment import wait_for_deployments_to_run

from tests.support.processes import ROOT, free_port, wait_until

KUBECTL = ROOT / ".tools" / "kubectl"
HELM = ROOT / ".tools" / "helm"
CHART_NAME = "redis-stream-demo"


def test_deployments_become_ready(kube_cluster, release, namespace):
    names = [f"{release}-{CHART_NAME}-proxy", f"{release}-{CHART_NAME}-worker"]

    ready = wait_for_deployments_to_run(kube_cluster.kube_client, names, namespace, timeout_sec=300)

    assert {deployment.name for deployment in ready} == set(names)


def test_helm_test_passes(kube_cluster, release, namespace):
    result = subprocess.run([str(HELM), "test", release, "-n", namespace, "--timeout", "3m", "--logs"],
                            capture_output=True, text=True, timeout=240)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def forwarded_proxy(release, namespace):
    port = free_port()
    forward = subprocess.Popen(
        [str(KUBECTL), "-n", namespace, "port-forward", f"svc/{release}-{CHART_NAME}-proxy", f"{port}:80"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, 60, what="port-forward")
        yield url
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_requests_through_a_port_forward_succeed(kube_cluster, forwarded_proxy):
    def ask(index: int) -> int:
        response = requests.post(forwarded_proxy + "/WeatherForecast/city",
                                 json={"city": f"city-{index}", "location": "kind"}, timeout=40)
        return response.status_code

    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = list(pool.map(ask, range(30)))

    assert statuses == [200] * 30
