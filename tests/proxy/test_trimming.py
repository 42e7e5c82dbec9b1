from __future__ import annotations

import pytest

pytestmark = pytest.mark.system


def test_enqueue_trims_entries_older_than_any_deadline_but_keeps_fresh_ones(stack):
    client = stack.redis.client()
    # Entries from long ago (ids carry milliseconds since the epoch) and fresh ones.
    for sequence in range(1, 501):
        client.xadd("weather-requests", {"old": "1"}, id=f"1000-{sequence}")
    fresh = [client.xadd("weather-requests", {"fresh": "1"}) for _ in range(3)]
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1").wait_ready()

    assert proxy.ask("Oslo", "Norway").status_code == 504

    remaining = [entry_id for entry_id, _ in client.xrange("weather-requests")]
    old_left = [entry_id for entry_id in remaining if entry_id.startswith(b"1000-")]
    # Approximate trimming removes whole nodes of 100 entries: most of the old ones go.
    assert len(old_left) <= 100
    assert set(fresh) <= set(remaining)
    assert len(remaining) - len(old_left) == 4  # the three fresh entries and the new request
