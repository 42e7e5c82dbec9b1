"""Changing REQUEST_STREAM_SHARDS while the system runs: 3 to 6 shards on a real cluster,
under open-loop load, proxies and workers rolled one by one as a Deployment update would."""

from __future__ import annotations

import itertools
import signal
import time

import pytest

from app.shared import contract
from app.worker.housekeeping import HOUSEKEEPING_INTERVAL_SECONDS
from tests.support.load import SteadyLoad, summary
from tests.support.processes import metric_value, wait_until

pytestmark = pytest.mark.system

GROUP = contract.DEFAULT_CONSUMER_GROUP
BASE = contract.DEFAULT_REQUEST_STREAM
OLD, NEW = 3, 6
ANNOUNCE_SECONDS = 0.5


def _streams(shards: int) -> list[str]:
    return contract.request_streams(BASE, shards, tagged=True)


def _queues(shards: int) -> list[str]:
    """Each shard and its prompt lane."""
    return [queue for stream in _streams(shards) for queue in (stream, contract.prompt_lane(stream))]


def _added(client, streams: list[str]) -> int:
    return sum(int(client.xinfo_stream(s)["entries-added"]) for s in streams if client.exists(s))


def _drained(client, streams: list[str]) -> bool:
    for stream in streams:
        if not client.exists(stream):
            continue
        group = next(g for g in client.xinfo_groups(stream) if g["name"] == GROUP.encode())
        if group["pending"] or group["lag"]:
            return False
    return True


def _sets_read(worker) -> dict[str, float]:
    import requests

    text = requests.get(worker.url + "/metrics", timeout=5).text
    return {shards: metric_value(text, "weather_worker_shard_sets_read", {"shards": shards})
            for shards in (str(OLD), str(NEW)) if f'shards="{shards}"' in text}


def test_three_shards_become_six_under_load_without_a_lost_or_stranded_request(cluster_stack, redis_cluster):
    common = {"SHARD_SET_ANNOUNCE_SECONDS": str(ANNOUNCE_SECONDS), "REQUEST_TIMEOUT_SECONDS": "15"}
    worker_env = {"PROCESSING_DELAY_MS": "5-30", "WORKER_TERMINALS": "8", **common}
    old_env, new_env = {"REQUEST_STREAM_SHARDS": str(OLD)}, {"REQUEST_STREAM_SHARDS": str(NEW)}
    [old_proxy], [old_worker] = cluster_stack.started(1, ["old"], {**common, **old_env}, {**worker_env, **old_env})
    client = redis_cluster.client()
    serving = [old_proxy.url]
    rotation = itertools.count()

    with SteadyLoad(lambda: serving[next(rotation) % len(serving)], rate=40, max_seconds=24, timeout=20) as load:
        time.sleep(3)
        # A new worker reads its 6 and, announced by the old proxy, 3.
        new_worker = cluster_stack.worker("new", **worker_env, **new_env).wait_ready()
        wait_until(lambda: _sets_read(new_worker) == {str(OLD): 1, str(NEW): 1}, 10, what="new worker reads both")
        # A new proxy: for a while both write, each its own set, and the old worker reads 6 too.
        new_proxy = cluster_stack.proxy(**common, **new_env).wait_ready()
        serving.append(new_proxy.url)
        wait_until(lambda: _sets_read(old_worker) == {str(OLD): 1, str(NEW): 1}, 10, what="old worker reads both")
        time.sleep(3)
        old_worker.signal(signal.SIGTERM)
        assert old_worker.wait(30) == 0
        time.sleep(2)
        serving.remove(old_proxy.url)
        time.sleep(0.5)  # what was already sent to it
        old_proxy.signal(signal.SIGTERM)
        assert old_proxy.wait(30) == 0
        stopped_old_at = time.monotonic()
        wait_until(lambda: _sets_read(new_worker) == {str(NEW): 1}, 15, what="the old set retired")
        retired_after = time.monotonic() - stopped_old_at
        time.sleep(3)
    results = load.stop()

    wait_until(lambda: _drained(client, _queues(OLD) + _queues(NEW)), 10, what="every entry acknowledged")
    on_old, on_new = _added(client, _queues(OLD)), _added(client, _queues(NEW))
    print(summary("3 -> 6 shards", results), f"entries on the 3 set={on_old} on the 6 set={on_new} "
          f"old set retired {retired_after:.1f} s after the last old proxy stopped")

    assert [r.status for r in results] == [200] * len(results)
    assert all(r.body["city"] == r.city for r in results)
    assert on_old > 0 and on_new > 0 and on_old + on_new == len(results)
    assert str(OLD).encode() not in {m for m, _ in client.zrange(contract.shard_sets_key(BASE), 0, -1, withscores=True)}
    assert new_worker.metric("weather_worker_shard_sets_retired_total") == 1
    # The worker refreshes its queue figures every HOUSEKEEPING_INTERVAL_SECONDS: the drain
    # just seen on Redis shows there within one more round (a fresh clone's run read it before).
    wait_until(lambda: all(new_worker.metric("weather_worker_shard_lag_entries", {"shard": s}) == 0
                           for s in _streams(NEW)), 2 * HOUSEKEEPING_INTERVAL_SECONDS + 2, what="lag metric at 0")
