from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.processes import ROOT, free_port

pytestmark = pytest.mark.system


def _loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.loadtest", "--no-progress", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})


def test_a_clean_run_exits_zero_with_a_summary_and_reports(stack, tmp_path):
    # With admission on: a closed loop of 8 clients is never refused (a fresh worker's first
    # drain figures once refused part of its first burst: 3 x 503, once in a full run).
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="0-5", WORKER_TERMINALS="8").wait_ready()

    result = _loadtest("--url", proxy.url, "--count", "120", "--concurrency", "8",
                       "--report", str(tmp_path / "report.html"))
    sequential = _loadtest("--url", proxy.url, "--mode", "sequential", "--count", "10",
                           "--report", str(tmp_path / "report.png"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"status 200\s+│\s+120\s+│", result.stdout), result.stdout
    assert "p99 latency" in result.stdout and "requests/s" in result.stdout
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    assert sequential.returncode == 0
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_async_mode_submits_polls_and_counts_each_result_once(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    worker = stack.worker("w", PROCESSING_DELAY_MS="0-5", WORKER_TERMINALS="8").wait_ready()

    closed = _loadtest("--url", proxy.url, "--async", "--count", "40", "--concurrency", "8")
    opened = _loadtest("--url", proxy.url, "--async", "--rate", "20", "--count", "20")

    assert closed.returncode == 0 and opened.returncode == 0, closed.stdout + opened.stdout
    assert "(submit and poll)" in closed.stdout
    assert re.search(r"status 200\s+│\s+40\s+│", closed.stdout), closed.stdout
    assert re.search(r"status 200\s+│\s+20\s+│", opened.stdout), opened.stdout
    assert worker.metric("weather_worker_processed_total") == 60
    assert stack.redis.client().xlen("weather-requests") == 60


def test_failures_give_exit_one_with_examples(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="0.5").wait_ready()  # no worker: every request times out

    result = _loadtest("--url", proxy.url, "--count", "6", "--concurrency", "3")

    assert result.returncode == 1
    assert "status 504" in result.stdout
    assert "error: HTTP 504" in result.stdout


def test_a_service_that_is_not_ready_is_not_loaded():
    result = _loadtest("--url", f"http://127.0.0.1:{free_port()}", "--count", "5")

    assert result.returncode == 2
    assert "not ready" in result.stderr


def test_bad_arguments_are_refused():
    result = _loadtest("--count", "0")
    assert result.returncode == 2
    assert "must be positive" in result.stderr


def test_open_loop_keeps_its_schedule_and_counts_queueing_from_the_scheduled_start(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    # One terminal of 100 ms is 10 req/s; 20 req/s for one second queues the second half.
    stack.worker("w", PROCESSING_DELAY_MS="100", WORKER_TERMINALS="1").wait_ready()

    result = _loadtest("--url", proxy.url, "--rate", "20", "--count", "20")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "open loop, 20 req/s" in result.stdout
    assert re.search(r"status 200\s+│\s+20\s+│", result.stdout), result.stdout
    # A closed loop would report ~100 ms for every request; from the schedule the last
    # ones waited behind the first (about 1 s).
    p99 = float(re.search(r"p99 latency \(ms, 200s\)\s+│\s+([\d.]+)", result.stdout).group(1))
    assert p99 > 500, result.stdout


def test_a_bad_rate_is_refused():
    result = _loadtest("--rate", "0")
    assert result.returncode == 2
    assert "--rate" in result.stderr


def test_make_load_is_what_make_runs_worker_serves(stack):
    """`make load`'s default rate against `make run`'s worker (its default terminals and work time):
    every request answered, and no queue builds up (the worker's longest work is 0.5 s)."""
    proxy = stack.proxy().wait_ready()
    stack.worker("w").wait_ready()

    result = subprocess.run(["make", "-s", "load", "LOAD_DURATION=8", "LOAD_ARGS=--no-progress"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PORT": str(proxy.port), "COLUMNS": "120"})
    print(result.stdout)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "open loop, 10 req/s" in result.stdout
    assert re.search(r"status 200\s+│\s+8\d\s+│", result.stdout), result.stdout
    p99 = float(re.search(r"p99 latency \(ms, 200s\)\s+│\s+([\d.]+)", result.stdout).group(1))
    assert p99 < 2000, f"p99 {p99} ms: the default rate queues behind make run's worker"


def test_refusals_are_reported_apart_from_failures_with_their_retry_after(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="4").wait_ready()
    stack.worker("w", PROCESSING_DELAY_MS="100", WORKER_TERMINALS="1").wait_ready()  # 10 a second
    warm = _loadtest("--url", proxy.url, "--mode", "sequential", "--count", "12")  # its drain is learned
    assert warm.returncode == 0, warm.stdout

    result = _loadtest("--url", proxy.url, "--rate", "40", "--duration", "3", "--urgency", "5")

    assert result.returncode == 0, result.stdout + result.stderr  # refused is not failed
    assert re.search(r"refused \(503 with Retry-After; not failures\)\s+│\s+\d+\s+│", result.stdout), result.stdout
    assert "Retry-After median / max (s)" in result.stdout
    assert "status 503" in result.stdout and "status 504" not in result.stdout
