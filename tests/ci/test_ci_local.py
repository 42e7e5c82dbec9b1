"""make ci-local fails when a job of ci.yml fails: act runs a copy of the repository whose
workflow asks for a Python this machine does not have, so the setup-python step fails."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.system


def test_a_failing_step_fails_the_job_and_ci_local(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    workflow = repo / ".github" / "workflows" / "ci.yml"
    workflow.write_text(workflow.read_text().replace('python-version: "3.11"', 'python-version: "3.99"'))

    result = subprocess.run(["scripts/ci-local.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "REPO": str(repo)})

    assert result.returncode != 0
    assert "== job lint: failed" in result.stdout and "== job chart: failed" in result.stdout
    assert "python3 on PATH is 3.11, the workflow asks for 3.99" in result.stderr
