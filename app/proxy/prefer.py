"""The caller's RFC 7240 preferences this API honours: ``respond-async`` and ``wait=N``.

A preference is a wish, not an order (RFC 7240 section 2): one this proxy does not know or
cannot read is ignored, never refused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preferences:
    respond_async: bool = False
    # Seconds the caller is willing to wait for the answer before a 202; None: not said.
    wait_seconds: float | None = None

    @property
    def pollable(self) -> bool:
        """Whether the answer may be a 202 with a result to poll instead of a 504."""
        return self.respond_async or self.wait_seconds is not None


def parse_prefer(headers: list[str]) -> Preferences:
    """Every ``Prefer`` header's preferences; the first of each name counts (RFC 7240 section 2)."""
    seen: dict[str, str] = {}
    for header in headers:
        for preference in header.split(","):
            token = preference.partition(";")[0]  # parameters of a preference are not used
            name, _, value = token.strip().partition("=")
            seen.setdefault(name.strip().lower(), value.strip().strip('"'))
    # delta-seconds: digits only; anything else is a wait this proxy cannot read.
    wait_text = seen.get("wait", "")
    wait = float(wait_text) if wait_text.isdigit() else None
    return Preferences(respond_async="respond-async" in seen, wait_seconds=wait)
