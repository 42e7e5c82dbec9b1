"""test-requests.http, the seed's own requests, answered 2xx when run by httpyac (an off-the-shelf .http runner)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.system

HTTPYAC = ROOT / ".tools" / "httpyac" / "node_modules" / ".bin" / "httpyac"


def run_http_file(proxy_url: str, worker_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HTTPYAC), "send", "test-requests.http", "--all", "--no-color", "-o", "short",
         "--var", f"proxy={proxy_url}", f"worker={worker_url}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_every_request_of_the_file_answers_2xx(stack):
    worker = stack.worker("w1").wait_ready()
    proxy = stack.proxy().wait_ready()

    result = run_http_file(proxy.url, worker.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 requests processed (6 succeeded)" in result.stdout


def test_the_runner_fails_when_a_service_is_not_there(stack):
    proxy = stack.proxy().wait_ready()

    result = run_http_file(proxy.url, "http://127.0.0.1:9")

    assert result.returncode != 0
