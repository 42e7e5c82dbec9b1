"""Writing a file the chart reads but cannot compute itself, or checking it is current."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(target: Path, text: str, command: str) -> int:
    """With --check: 1 (and says how to fix it) when ``target`` differs from ``text``; else writes it."""
    if "--check" in sys.argv:
        if target.read_text() != text:
            print(f"{target} is out of date: run {command}", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0
