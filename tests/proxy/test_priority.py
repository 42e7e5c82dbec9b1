"""The Priority header's urgency (RFC 9218): a hint, never a reason for a 400."""

from __future__ import annotations

import pytest

from app.proxy.priority import DEFAULT_URGENCY, parse_urgency


@pytest.mark.parametrize(("headers", "urgency"), [
    ([], DEFAULT_URGENCY),
    (["u=1"], 1),
    (["u=0, i"], 0),
    (["i", "u=6"], 6),  # field lines combine into one dictionary
    (["u=2", "u=5"], 5),  # a repeated key: the last one counts (RFC 8941 4.2.2)
    (["u=9"], DEFAULT_URGENCY),  # out of range
    (["u=-1"], DEFAULT_URGENCY),
    (["u=1.5"], DEFAULT_URGENCY),  # not an integer
    (["u=?1"], DEFAULT_URGENCY),  # a boolean
    (["u=a"], DEFAULT_URGENCY),
    (["u=1, garbage=("], DEFAULT_URGENCY),  # unparsable as a whole
    (["\xffu=1"], DEFAULT_URGENCY),
])
def test_urgency(headers, urgency):
    assert parse_urgency(headers) == urgency


@pytest.mark.system
def test_synchronous_requests_are_served_ahead_of_an_async_backlog(stack):
    """A caller's async work waits in the shard; its synchronous requests, urgent or not,
    take the prompt lane ahead of it (and of its urgent ones' lane before shares applied)."""
    import requests

    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="30").wait_ready()
    stack.worker("w", WORKER_TERMINALS="1", PROCESSING_DELAY_MS="200").wait_ready()
    url = proxy.url + "/WeatherForecast/city"
    queued = [requests.post(url, json={"city": f"Later-{i}", "location": "X"}, headers={"Prefer": "respond-async"},
                            timeout=10) for i in range(15)]  # 3 s of work for one terminal
    assert {answer.status_code for answer in queued} == {202}

    urgent = requests.post(url, json={"city": "Now", "location": "X"}, headers={"Priority": "u=1"}, timeout=10)
    normal = requests.post(url, json={"city": "Behind", "location": "X"}, headers={"Priority": "u=3"}, timeout=10)

    assert urgent.status_code == 200 and urgent.json()["city"] == "Now"
    # One entry in work ahead of it at most, then its own: not the 3 s of the backlog.
    assert urgent.elapsed.total_seconds() < 1.0, urgent.elapsed
    assert normal.status_code == 200 and normal.elapsed.total_seconds() < 1.0, normal.elapsed
