from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.shared import contract
from app.shared.shard_sets import ShardSetRegistry
from tests.support.processes import ROOT

pytestmark = pytest.mark.system

UNREACHABLE = "http://127.0.0.1:1"


def run_monitor(url: str, *args: str, proxies: tuple[str, ...] = (UNREACHABLE,),
                workers: tuple[str, ...] = (UNREACHABLE,), **env: str) -> subprocess.CompletedProcess[str]:
    """One snapshot of `python -m tools.monitor`, 200 columns wide, with only ``env`` set."""
    services = [arg for url_ in proxies for arg in ("--proxy", url_)]
    services += [arg for url_ in workers for arg in ("--worker", url_)]
    return subprocess.run(
        [sys.executable, "-m", "tools.monitor", "--once", "--redis-url", url, *services, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", "PATH": os.environ["PATH"], **env},
    )


def table_rows(output: str, least_bars: int) -> dict[str, str]:
    """The snapshot's table rows by their first cell."""
    return {line.split("│")[1].strip(): line for line in output.splitlines() if line.count("│") > least_bars}


def test_monitor_shows_queue_consumers_and_services(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="5").wait_ready()
    worker = stack.worker("watched", PROCESSING_DELAY_MS="0").wait_ready()
    assert proxy.ask("Oslo", "Norway").status_code == 200
    stack.redis.client().xadd("weather-requests:dlq", {"x": "1"})

    result = run_monitor(stack.redis.url, proxies=(proxy.metrics_url,), workers=(worker.url, UNREACHABLE))

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "weather-workers" in out and "watched" in out
    lines = table_rows(out, 3)
    assert "closed" in lines["proxy"] and "up" in lines["proxy"]
    assert "0/5" in next(line for line in out.splitlines() if worker.url in line)
    assert "unreachable" in next(line for line in out.splitlines() if "127.0.0.1:1 " in line)
    dead_letters = lines["weather-requests"].split("│")[-2].strip()
    assert dead_letters == "1"


def test_monitor_finds_the_primary_through_the_sentinels(sentinels):
    sentinels.primary.client().xadd("weather-requests", {"x": "1"})
    result = run_monitor("redis://not-used/0", **sentinels.env())

    assert result.returncode == 0, result.stderr
    flat = "".join(line.strip() for line in result.stdout.splitlines())
    assert f"sentinel://{sentinels.addresses}" in flat  # the title, wrapped by rich
    assert "Error" not in result.stdout  # a failed read shows as "<Exception>: ..." in the table


def test_monitor_shows_every_shard_of_a_cluster_and_their_sum(redis_cluster):
    client = redis_cluster.client()
    streams = contract.request_streams(contract.DEFAULT_REQUEST_STREAM, 3, tagged=True)
    for count, stream in enumerate(streams, start=1):
        client.xgroup_create(stream, contract.DEFAULT_CONSUMER_GROUP, id="0", mkstream=True)
        for _ in range(count):
            client.xadd(stream, {"x": "1"})
    result = run_monitor(redis_cluster.url, REDIS_CLUSTER="true", REQUEST_STREAM_SHARDS="3")

    assert result.returncode == 0, result.stderr
    lines = table_rows(result.stdout, 3)
    for count, stream in enumerate(streams, start=1):
        assert lines[stream].split("│")[2].strip() == str(count)  # lag
    assert lines["all 3 shards"].split("│")[2].strip() == "6"


def test_monitor_shows_both_shard_sets_while_the_count_changes(redis_cluster):
    client = redis_cluster.client()
    registry = ShardSetRegistry(client, contract.DEFAULT_REQUEST_STREAM, hash_tagged=True)
    registry.announce(6)
    # The last proxy on 3 announced it a minute ago (the default window is 3 x 10 s).
    client.zadd(registry.key, {"3": registry.announced().now_ms - 60_000})
    old = registry.streams(3)[0]
    client.xgroup_create(old, contract.DEFAULT_CONSUMER_GROUP, id="0", mkstream=True)
    client.xadd(old, {"x": "1"})
    result = run_monitor(redis_cluster.url, REDIS_CLUSTER="true", REQUEST_STREAM_SHARDS="6")

    assert result.returncode == 0, result.stderr
    lines = table_rows(result.stdout, 2)
    assert lines[old].split("│")[2].strip() == "1"  # the old set's lag is shown beside the new set's shards
    assert all(stream in lines for stream in registry.streams(6))
    assert "all 9 shards" in lines
    assert "written" in lines["6"] and "retired once drained" in lines["3"]
