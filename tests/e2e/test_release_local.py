"""make release-local: the release path against a real OCI registry. The images built here and
the chart (by ci/release-chart.sh, the script release.yml runs) are pushed to Debian's
docker-registry (TLS from a CA made for the run, htpasswd), the chart is pulled back and
rendered with the registry as the image source, and podman, with an empty image store of its
own, must pull every image from the registry to play the pods; one forecast is asked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import requests
import yaml

from tests.e2e.conftest import NAMESPACE, RELEASE, VALUES, deployed
from tests.e2e.podman import Podman
from tests.support.processes import ROOT
from tests.support.registry import PASSWORD, USER, Registry

pytestmark = pytest.mark.release

VERSION = "0.0.0-local"
COMPONENTS = ("proxy", "worker", "redis")
HELM = str(ROOT / ".tools" / "helm")


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(argv[:3])} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def registry(tmp_path):
    running = Registry(tmp_path / "registry")
    yield running
    running.stop()


def test_the_release_is_pushed_pulled_back_and_serves_a_forecast(registry, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(registry.ca, certs / "ca.crt")
    creds = f"{USER}:{PASSWORD}"
    pushed = {}
    for component in COMPONENTS:
        target = f"docker://{registry.address}/redis-stream-demo-{component}:{VERSION}"
        _run(["skopeo", "copy", "--dest-creds", creds, "--dest-cert-dir", str(certs),
              f"containers-storage:localhost/redis-stream-demo-{component}:test", target])
        inspected = _run(["skopeo", "inspect", "--creds", creds, "--cert-dir", str(certs), target])
        pushed[component] = json.loads(inspected.stdout)["Digest"]

    env = {**os.environ, "SSL_CERT_FILE": str(registry.ca)}
    released = _run(["ci/release-chart.sh"], cwd=ROOT, env={
        **env, "VERSION": VERSION, "REGISTRY": f"{registry.address}/charts", "REGISTRY_USER": USER,
        "REGISTRY_PASSWORD": PASSWORD})
    chart_digest = next(line.split()[-1] for line in (released.stdout + released.stderr).splitlines()
                        if line.startswith("Digest:"))
    pulled = _run([HELM, "pull", f"oci://{registry.address}/charts/redis-stream-demo", "--version", VERSION,
                   "--destination", str(tmp_path)], env=env)
    assert f"Digest: {chart_digest}" in pulled.stdout + pulled.stderr

    images = [arg for component in COMPONENTS for arg in (
        "--set", f"{component}.image.repository={registry.address}/redis-stream-demo-{component}",
        "--set", f"{component}.image.pullPolicy=IfNotPresent")]
    rendered = _run([HELM, "template", RELEASE, str(tmp_path / f"redis-stream-demo-{VERSION}.tgz"),
                     "--namespace", NAMESPACE, "-f", str(VALUES), *images,
                     *(arg for c in COMPONENTS for arg in ("--set", f"{c}.image.tag={VERSION}"))])
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]

    (tmp_path / "podman").mkdir()
    podman = Podman(tmp_path / "podman", storage_root=tmp_path / "store", pull_args=("--creds", creds,
                                                                                    "--cert-dir", str(certs)))
    try:
        assert podman("images", "--quiet").stdout.strip() == "", "the image store is not empty"
        with deployed(podman, docs) as deployment:
            answer = requests.post(deployment.proxy_url + "/WeatherForecast/city",
                                   json={"city": "Oslo", "location": "Norway"}, timeout=30)
            running = {}
            for line in podman("ps", "--format", "{{.Image}}").stdout.split():
                if line.startswith(registry.address):
                    running[line] = podman("image", "inspect", "--format", "{{.Digest}}", line).stdout.strip()
    finally:
        podman("rmi", "--all", "--force", check=False)
        shutil.rmtree(tmp_path / "store", ignore_errors=True)

    print(f"\nreleased {VERSION}: chart {chart_digest}; images pushed {pushed}; running {running}")
    assert answer.status_code == 200 and answer.json()["city"] == "Oslo"
    assert {f"{registry.address}/redis-stream-demo-{c}:{VERSION}": pushed[c] for c in COMPONENTS} == running
