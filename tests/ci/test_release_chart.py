"""ci/release-chart.sh, the script release.yml runs, against a real OCI registry (TLS from a
throwaway CA that helm trusts through SSL_CERT_FILE, htpasswd authentication)."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from tests.support.processes import ROOT
from tests.support.registry import PASSWORD, USER, Registry

pytestmark = pytest.mark.system

HELM = str(ROOT / ".tools" / "helm")


@pytest.fixture
def registry(tmp_path):
    running = Registry(tmp_path / "registry")
    yield running
    running.stop()


def release(registry: Registry, version: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    env = {**os.environ, "VERSION": version, "REGISTRY": f"{registry.address}/charts", "REGISTRY_USER": USER,
           "REGISTRY_PASSWORD": password, "SSL_CERT_FILE": str(registry.ca)}
    return subprocess.run(["ci/release-chart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_released_chart_is_pulled_back_with_the_pushed_digest_and_renders(registry, tmp_path):
    pushed = release(registry, "0.0.1-test")
    assert pushed.returncode == 0, pushed.stderr
    digest = next(line.split()[-1] for line in (pushed.stdout + pushed.stderr).splitlines()
                  if line.startswith("Digest:"))

    env = {**os.environ, "SSL_CERT_FILE": str(registry.ca)}
    pulled = subprocess.run([HELM, "pull", f"oci://{registry.address}/charts/redis-stream-demo", "--version",
                             "0.0.1-test", "--destination", str(tmp_path)], env=env, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    package = tmp_path / "redis-stream-demo-0.0.1-test.tgz"
    assert f"Digest: {digest}" in pulled.stdout + pulled.stderr
    local = ROOT / "dist" / "redis-stream-demo-0.0.1-test.tgz"
    assert hashlib.sha256(package.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()
    rendered = subprocess.run([HELM, "template", "demo", str(package), "--set",
                               f"proxy.image.repository={registry.address}/redis-stream-demo-proxy"],
                              capture_output=True, text=True)
    assert rendered.returncode == 0 and f"{registry.address}/redis-stream-demo-proxy:0.0.1-test" in rendered.stdout


def test_a_wrong_password_fails_the_push_with_a_clear_message(registry):
    refused = release(registry, "0.0.2-test", password="wrong")  # noqa: S106 - a wrong one on purpose

    assert refused.returncode != 0
    assert "401" in refused.stderr and "unauthorized" in refused.stderr


def test_a_released_version_is_not_overwritten(registry):
    assert release(registry, "0.0.3-test").returncode == 0

    again = release(registry, "0.0.3-test")

    assert again.returncode != 0
    assert "already in oci://" in again.stderr and "refusing to overwrite" in again.stderr
