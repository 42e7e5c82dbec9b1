from __future__ import annotations

import pytest

from app.shared import contract

pytestmark = pytest.mark.system


def test_enqueue_trims_entries_older_than_any_deadline_but_keeps_fresh_ones(stack):
    client = stack.redis.client()
    # Entries from long ago (ids carry milliseconds since the epoch) and fresh ones, in the
    # prompt lane, where a synchronous request of a lone caller goes.
    lane = contract.prompt_lane("weather-requests")
    for sequence in range(1, 501):
        client.xadd(lane, {"old": "1"}, id=f"1000-{sequence}")
    fresh = [client.xadd(lane, {"fresh": "1"}) for _ in range(3)]
    # The 503 old entries are no backlog admission should refuse over (no group reads them).
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1", ADMISSION_COLD_BACKLOG="1000").wait_ready()

    assert proxy.ask("Oslo", "Norway").status_code == 504

    remaining = [entry_id for entry_id, _ in client.xrange(lane)]
    old_left = [entry_id for entry_id in remaining if entry_id.startswith(b"1000-")]
    # Approximate trimming removes whole nodes of 100 entries: most of the old ones go.
    assert len(old_left) <= 100
    assert set(fresh) <= set(remaining)
    assert len(remaining) - len(old_left) == 4  # the three fresh entries and the new request


def test_once_a_proxy_accepts_async_work_every_proxy_keeps_entries_until_its_deadline(stack):
    import time

    from tests.proxy.test_async import submit

    client = stack.redis.client()
    # Entries two minutes old: past a synchronous proxy's window (1 s timeout + 60 s margin).
    two_minutes_ago = int(time.time() * 1000) - 120_000
    old = [client.xadd("weather-requests", {"old": "1"}, id=f"{two_minutes_ago}-{n}") for n in range(1, 301)]
    # Admission off: with no worker ever started those 300 are a backlog it would refuse
    # new work behind (ADMISSION_COLD_BACKLOG); here they only stand for old entries.
    asynchronous = stack.proxy(REQUEST_TIMEOUT_SECONDS="1", ADMISSION_ENABLED="false").wait_ready()
    synchronous = stack.proxy(REQUEST_TIMEOUT_SECONDS="1", ADMISSION_ENABLED="false").wait_ready()

    assert submit(asynchronous.url, "respond-async").status_code == 202
    time.sleep(6)  # the horizon published and read back by the other proxy (every 5 s)
    assert synchronous.ask("Oslo", "Norway").status_code == 504  # an XADD with its MINID

    remaining = {entry_id for entry_id, _ in client.xrange("weather-requests")}
    assert set(old) <= remaining, f"{len(set(old) - remaining)} entries trimmed within the async deadline"
