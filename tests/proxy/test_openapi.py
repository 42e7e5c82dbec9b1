"""The OpenAPI description, the packaged Swagger UI, and schemathesis against the live proxy."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import requests

from tests.support.processes import BIN, ROOT

pytestmark = pytest.mark.system

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance",
])


@pytest.fixture
def served(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10", LOG_LEVEL="WARNING")
    stack.worker("w", PROCESSING_DELAY_MS="0", WORKER_TERMINALS="16", LOG_LEVEL="WARNING").wait_ready()
    return proxy.wait_ready()


def test_the_description_and_the_ui_are_served_without_a_cdn(served):
    spec = requests.get(served.url + "/openapi.json", timeout=5).json()
    page = requests.get(served.url + "/docs", timeout=5)
    bundle = requests.get(served.url + "/docs/swagger-ui-bundle.js", timeout=5)

    assert spec["openapi"].startswith("3.1")
    assert {"/WeatherForecast/city", "/WeatherForecast", "/healthz", "/readyz"} <= set(spec["paths"])
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert not re.search(r"(src|href)=\"https?://", page.text), "the page loads something from outside"
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert spec == json.loads((ROOT / "app" / "proxy" / "openapi.json").read_text())


def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(served):
    result = subprocess.run(
        [str(BIN / "st"), "run", served.url + "/openapi.json", "--url", served.url, "--checks", CHECKS,
         "--max-examples", "1100", "--no-color", "--generation-deterministic"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    print(result.stdout[-1500:])

    assert result.returncode == 0, result.stdout[-4000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated.group(1)) >= 1000, result.stdout[-1500:]
    assert "No issues found" in result.stdout
