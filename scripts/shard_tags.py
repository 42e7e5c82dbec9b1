"""Writes charts/redis-stream-demo/files/shard-tags.json: the hash tag of every shard.

Helm cannot compute a CRC16 slot, so the chart reads the tags the services derive
(app.shared.contract.shard_tag) from this file to name one KEDA trigger per shard.
Run with --check to fail when the file is out of date (a test does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chart_file import write_or_check  # noqa: E402 - beside this script

from app.shared import contract  # noqa: E402
from app.shared.settings import CommonSettings  # noqa: E402

TARGET = ROOT / "charts" / "redis-stream-demo" / "files" / "shard-tags.json"


def tags() -> str:
    most = CommonSettings.model_fields["request_stream_shards"].metadata[-1].le
    table = {str(shards): [contract.shard_tag(index, shards) for index in range(shards)]
             for shards in range(1, most + 1)}
    return json.dumps(table, separators=(",", ":")) + "\n"


def main() -> int:
    return write_or_check(TARGET, tags(), "python scripts/shard_tags.py")


if __name__ == "__main__":
    raise SystemExit(main())
