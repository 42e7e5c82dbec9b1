"""Writes charts/redis-stream-demo/files/redis-acl.json: the ACL rules of app.shared.acl
for the chart's embedded Redis.

Each entry is a user's line with two placeholders: %REQUEST_STREAM% (the chart puts
config.requestStream there) and @<secret key>@ where the SHA-256 of that user's password
goes (the Redis pod's start script computes it from the Secret, so neither a password nor
its hash is in the ConfigMap). Run with --check to fail when the file is out of date (a
test does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.shared.acl import admin_user, users  # noqa: E402

TARGET = ROOT / "charts" / "redis-stream-demo" / "files" / "redis-acl.json"
STREAM_PLACEHOLDER = "%REQUEST_STREAM%"
# The admin keeps the embedded Redis's one password of before (the key of redis.auth).
SECRET_KEYS = {"proxy": "proxy-password", "worker": "worker-password", "monitor": "monitor-password",
               "probe": "probe-password", "admin": "redis-password"}


def rules() -> str:
    entries = [{"user": user.name, "secretKey": SECRET_KEYS[user.name],
                "line": user.rule_for_hash(f"@{SECRET_KEYS[user.name]}@")}
               for user in [*users(STREAM_PLACEHOLDER), admin_user()]]
    return json.dumps({"users": entries, "last": "user default off"}, indent=1) + "\n"


def main() -> int:
    text = rules()
    if "--check" in sys.argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/redis_acl_json.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
