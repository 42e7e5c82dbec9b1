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
