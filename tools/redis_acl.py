"""Print the Redis ACL rules of redis-stream-demo, one `user ...` line per component.

    REDIS_ACL_PROXY_PASSWORD=... REDIS_ACL_WORKER_PASSWORD=... REDIS_ACL_MONITOR_PASSWORD=... \\
        python -m tools.redis_acl > users.acl

Passwords come from the environment and are written as their SHA-256 (`#<hex>`), never
in clear. REDIS_ACL_PROBE_PASSWORD adds the user of a Redis pod's own health check;
REDIS_ACL_ADMIN_PASSWORD adds an operator user with every right and turns the `default`
user off (without it the default user is left as it is, so that nobody is locked out).
Key names follow REQUEST_STREAM, as the services read it. Load the lines as an ACL file
(`aclfile` in redis.conf, then `ACL LOAD`) or send each as `ACL SETUSER` (the README shows
both, and what a managed Redis takes). `--shared NAME` prints one user for both services.
"""

from __future__ import annotations

import argparse
import os
import sys

from app.shared import contract
from app.shared.acl import DEFAULT_USER_OFF, admin_user, shared_user, users

ADMIN_PASSWORD_VARIABLE = admin_user().password_variable
OPTIONAL = ("REDIS_ACL_PROBE_PASSWORD",)


def rules(request_stream: str, environ: dict[str, str]) -> list[str]:
    """The ACL lines for these passwords; raises naming the first required one missing."""
    lines = []
    for user in users(request_stream):
        password = environ.get(user.password_variable, "")
        if not password:
            if user.password_variable in OPTIONAL:
                continue
            raise SystemExit(f"{user.password_variable} is not set: the {user.name} user needs a password")
        lines.append(user.rule(password))
    admin = environ.get(ADMIN_PASSWORD_VARIABLE, "")
    if admin:
        lines.append(admin_user().rule(admin))
        lines.append(DEFAULT_USER_OFF)
    else:
        lines.append(f"# the default user is left as it is: set {ADMIN_PASSWORD_VARIABLE} to add an admin "
                     "user and turn it off")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.redis_acl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--request-stream", default=os.environ.get("REQUEST_STREAM", contract.DEFAULT_REQUEST_STREAM),
                        help="REQUEST_STREAM of the services (default: from the environment)")
    parser.add_argument("--shared", metavar="NAME",
                        help="print one user NAME for both services instead (a managed Redis with a single user); "
                             "its password from REDIS_ACL_SHARED_PASSWORD")
    args = parser.parse_args(argv)
    if args.shared:
        user = shared_user(args.request_stream, args.shared)
        password = os.environ.get(user.password_variable, "")
        if not password:
            raise SystemExit(f"{user.password_variable} is not set: the {user.name} user needs a password")
        print(user.rule(password))
        return 0
    print("\n".join(rules(args.request_stream, dict(os.environ))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
