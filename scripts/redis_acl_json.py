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

from chart_file import write_or_check  # noqa: E402 - beside this script

from app.shared.acl import DEFAULT_USER_OFF, admin_user, users  # noqa: E402

TARGET = ROOT / "charts" / "redis-stream-demo" / "files" / "redis-acl.json"
STREAM_PLACEHOLDER = "%REQUEST_STREAM%"
# The admin keeps the embedded Redis's one password of before (the key of redis.auth).
SECRET_KEYS = {"proxy": "proxy-password", "worker": "worker-password", "monitor": "monitor-password",
               "probe": "probe-password", "admin": "redis-password"}


def rules() -> str:
    entries = [{"user": user.name, "secretKey": SECRET_KEYS[user.name],
                "line": user.rule_for_hash(f"@{SECRET_KEYS[user.name]}@")}
               for user in [*users(STREAM_PLACEHOLDER), admin_user()]]
    return json.dumps({"users": entries, "last": DEFAULT_USER_OFF}, indent=1) + "\n"


def main() -> int:
    return write_or_check(TARGET, rules(), "python scripts/redis_acl_json.py")


if __name__ == "__main__":
    raise SystemExit(main())
