"""The alert rules pass promtool's checks and its unit tests (alerts/*.test.yml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.processes import ROOT

ALERTS = ROOT / "alerts"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH; run `make setup` (it installs Debian's prometheus)")
    return path


def test_rules_are_valid(promtool):
    result = subprocess.run([promtool, "check", "rules", "redis-stream-demo.rules.yml"], cwd=ALERTS,
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_each_alert_fires_and_stays_quiet(promtool):
    result = subprocess.run([promtool, "test", "rules", "redis-stream-demo.test.yml"], cwd=ALERTS,
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_a_runbook():
    import yaml

    rules = yaml.safe_load((ALERTS / "redis-stream-demo.rules.yml").read_text())
    tests = yaml.safe_load((ALERTS / "redis-stream-demo.test.yml").read_text())
    readme = (ROOT / "README.md").read_text()
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        assert rule["alert"] in tested
        assert f"#### {rule['alert']}" in readme, f"no runbook for {rule['alert']} in README.md"
