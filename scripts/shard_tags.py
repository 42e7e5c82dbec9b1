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

from app.shared import contract  # noqa: E402
from app.shared.settings import CommonSettings  # noqa: E402

TARGET = ROOT / "charts" / "redis-stream-demo" / "files" / "shard-tags.json"


def tags() -> str:
    most = CommonSettings.model_fields["request_stream_shards"].metadata[-1].le
    table = {str(shards): [contract.shard_tag(index, shards) for index in range(shards)]
             for shards in range(1, most + 1)}
    return json.dumps(table, separators=(",", ":")) + "\n"


def main() -> int:
    text = tags()
    if "--check" in sys.argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/shard_tags.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
