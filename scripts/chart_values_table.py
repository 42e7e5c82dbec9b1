"""Writes the values table of charts/redis-stream-demo/README.md from values.yaml.

Every key documented with a `# -- text` comment in values.yaml becomes a row. Run with
--check to fail when the README is out of date (a test does).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "redis-stream-demo"
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_]+):")


def documented_keys(text: str) -> list[tuple[str, str]]:
    rows, path, pending = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            pending = stripped[5:]
            continue
        match = KEY.match(line)
        if not match or line.lstrip().startswith("-"):
            continue
        depth = len(match["indent"]) // 2
        path = [*path[:depth], match["key"]]
        if pending:
            rows.append((".".join(path), pending))
            pending = None
    return rows


def lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        node = node[part]
    return node


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, description in documented_keys(values_text):
        default = json.dumps(lookup(values, key))
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {escaped} |")
    return "\n".join(lines)


def render_readme() -> tuple[Path, str, str]:
    readme = CHART / "README.md"
    current = readme.read_text()
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    fresh = f"{head}{BEGIN}\n{table((CHART / 'values.yaml').read_text())}\n{END}{tail}"
    return readme, current, fresh


if __name__ == "__main__":
    readme, current, fresh = render_readme()
    if "--check" in sys.argv:
        if current != fresh:
            sys.exit(f"{readme} is out of date: run `make chart-docs`")
    else:
        readme.write_text(fresh)
