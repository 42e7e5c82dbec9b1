"""What the repository keeps: no local caches, and only the bench runs the README (or docs/) quotes."""

from __future__ import annotations

import re
import subprocess

from tests.support.processes import ROOT


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_local_caches_are_not_tracked():
    assert tracked(".schemathesis", ".hypothesis", ".pytest_cache", ".venv", ".tools", ".data") == []


def test_bench_results_kept_are_exactly_those_the_docs_quote():
    texts = [(ROOT / "README.md").read_text(), *(path.read_text() for path in (ROOT / "docs").glob("*.md"))]
    quoted = {name for text in texts for name in re.findall(r"bench/results/([\w.-]+\.json)", text)}
    kept = {path.removeprefix("bench/results/") for path in tracked("bench/results")}
    assert quoted, "the README quotes no bench run"
    assert kept == quoted
