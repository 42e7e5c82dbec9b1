"""The 60 s soak of `make test`: the cluster with replicas and REDIS_WAIT_REPLICAS, the mix,
five faults of five kinds from seed 7, and the checker's verdict (`make soak` runs longer)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.system

LAST_LINE = re.compile(r"soak: (\d+) requests, (\d+) faults \((\d+) kinds\), (\d+) violations")


def test_a_minute_of_faults_on_the_cluster_breaks_no_promise(tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "soak", "--seconds", "60", "--seed", "7", "--topology", "cluster",
                          "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(run.stdout[-20_000:], run.stderr[-5_000:])
    last = run.stdout.strip().splitlines()[-1]
    matched = LAST_LINE.fullmatch(last)
    assert matched, last
    requests, faults, kinds, violations = map(int, matched.groups())
    assert violations == 0 and run.returncode == 0, run.stdout[-5_000:]
    assert requests >= 600 and faults >= 5 and kinds >= 5
    # Each fault was printed as it happened.
    assert len(re.findall(r"^fault: \d+\.\d \S+ \S+$", run.stdout, re.MULTILINE)) == faults
