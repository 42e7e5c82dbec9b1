"""The caller's urgency (RFC 9218 ``Priority: u=N``): it orders a caller's own requests
within its share of the workers, and beyond it the least urgent are refused first
(app.proxy.fairness, app.proxy.admission). Like a preference, a priority is a hint: a
header this proxy cannot read, or an urgency out of range, means the default, never a 400."""

from __future__ import annotations

import http_sf

DEFAULT_URGENCY = 3
MOST_URGENT, LEAST_URGENT = 0, 7
# These keep their caller's whole share of its shard's prompt lane, which workers read first.
MOST_URGENT_LANE = 2


def is_urgent(urgency: int) -> bool:
    return urgency <= MOST_URGENT_LANE


def parse_urgency(headers: list[str]) -> int:
    """The urgency of the ``Priority`` field lines (combined as one dictionary, RFC 9110 5.3)."""
    if not headers:
        return DEFAULT_URGENCY
    try:
        members = http_sf.parse(", ".join(headers).encode("latin-1", errors="replace"), tltype="dictionary")
    except (http_sf.StructuredFieldError, ValueError):
        return DEFAULT_URGENCY
    member = members.get("u") if isinstance(members, dict) else None
    value = member[0] if isinstance(member, tuple) else DEFAULT_URGENCY
    if isinstance(value, bool) or not isinstance(value, int) or not MOST_URGENT <= value <= LEAST_URGENT:
        return DEFAULT_URGENCY
    return value
