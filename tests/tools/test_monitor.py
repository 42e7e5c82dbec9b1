from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.system


def test_monitor_shows_queue_consumers_and_services(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="5").wait_ready()
    worker = stack.worker("watched", PROCESSING_DELAY_MS="0").wait_ready()
    assert proxy.ask("Oslo", "Norway").status_code == 200
    stack.redis.client().xadd("weather-requests:dlq", {"x": "1"})

    result = subprocess.run(
        [sys.executable, "-m", "tools.monitor", "--once", "--redis-url", stack.redis.url,
         "--proxy", proxy.url, "--worker", worker.url, "--worker", "http://127.0.0.1:1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "weather-workers" in out and "watched" in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "closed" in lines["proxy"] and "up" in lines["proxy"]
    assert "0/5" in next(line for line in out.splitlines() if worker.url in line)
    assert "unreachable" in next(line for line in out.splitlines() if "127.0.0.1:1 " in line)
    dead_letters = lines["weather-workers"].split("│")[-2].strip()
    assert dead_letters == "1"


def test_monitor_finds_the_primary_through_the_sentinels(sentinels):
    sentinels.primary.client().xadd("weather-requests", {"x": "1"})
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", **sentinels.env()}

    result = subprocess.run(
        [sys.executable, "-m", "tools.monitor", "--once", "--redis-url", "redis://not-used/0",
         "--proxy", "http://127.0.0.1:1", "--worker", "http://127.0.0.1:1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env=env,
    )

    assert result.returncode == 0, result.stderr
    flat = "".join(line.strip() for line in result.stdout.splitlines())
    assert f"sentinel://{sentinels.addresses}" in flat  # the title, wrapped by rich
    assert "Error" not in result.stdout  # a failed read shows as "<Exception>: ..." in the table
