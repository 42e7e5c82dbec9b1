from __future__ import annotations

import pytest

from tests.support.load import fire

pytestmark = pytest.mark.system


def test_a_flood_past_the_cap_gets_fast_503s_and_the_proxy_recovers(stack):
    proxy = stack.proxy(WEB_CONCURRENCY="1", MAX_INFLIGHT_PER_PROCESS="5", REQUEST_TIMEOUT_SECONDS="3").wait_ready()

    # No worker: the first five wait for their deadline, the rest are refused at once.
    results = fire([proxy.url], count=25, concurrency=25, timeout=10)

    waited = [r for r in results if r.status == 504]
    refused = [r for r in results if r.status == 503]
    assert len(waited) == 5
    assert len(refused) == 20
    assert all(r.body["error"] == "overloaded" for r in refused)
    assert max(r.seconds for r in refused) < 1.0

    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    assert proxy.ask("Oslo", "Norway").status_code == 200
