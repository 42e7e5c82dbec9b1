"""The shard set registry: proxies announce the shard count they write, on Redis's clock."""

from __future__ import annotations

import time

from app.shared.loops import Loops
from app.shared.shard_sets import Announcer, ShardSetRegistry
from tests.support.processes import RedisServer, wait_until


def test_an_announcement_is_stamped_with_the_registry_redis_clock(redis_server):
    registry = ShardSetRegistry(redis_server.client(), "requests", hash_tagged=False)

    registry.announce(3)
    announced = registry.announced()

    redis_now_ms = int(redis_server.client().time()[0]) * 1000
    assert abs(announced.now_ms - redis_now_ms) < 2000
    assert set(announced.last_ms) == {3}
    assert 0 <= announced.now_ms - announced.last_ms[3] < 1000
    assert not announced.stale(3, retire_after_ms=1000)
    assert announced.stale(6, retire_after_ms=1000), "a count nobody announced is stale"
    assert registry.streams(1) == ["requests"]
    assert len(registry.streams(3)) == 3


def test_a_set_is_forgotten_only_when_no_announcement_came_since(redis_server):
    registry = ShardSetRegistry(redis_server.client(), "requests", hash_tagged=False)
    registry.announce(3)
    decided_at = registry.announced().now_ms
    time.sleep(0.01)
    registry.announce(3)  # a late proxy, between the decision and the removal

    assert not registry.forget(3, announced_before_ms=decided_at)
    assert 3 in registry.announced().last_ms
    assert registry.forget(3, announced_before_ms=registry.announced().now_ms)
    assert registry.announced().last_ms == {}


def test_the_announcer_keeps_announcing_and_survives_a_redis_outage(redis_server, tmp_path):
    registry = ShardSetRegistry(redis_server.client(), "requests", hash_tagged=False)
    announcer = Announcer(registry, 6, interval_seconds=0.2).start(Loops())
    try:
        wait_until(lambda: 6 in registry.announced().last_ms, 5, what="first announcement")
        redis_server.client().delete(registry.key)  # e.g. a restart without persistence
        wait_until(lambda: 6 in registry.announced().last_ms, 5, what="announced again")

        redis_server.stop()
        wait_until(lambda: announcer.last_error is not None, 5, what="an announcement failing")
        restarted = RedisServer(tmp_path / "restarted", port=redis_server.port)
        try:
            wait_until(lambda: 6 in registry.announced().last_ms, 5, what="announced after the restart")
            assert announcer.last_error is None
        finally:
            restarted.stop()
    finally:
        announcer.stop()
