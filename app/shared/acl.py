"""The Redis ACL users of the system: what each component may run, on which keys.

The one source of the rules: `python -m tools.redis_acl` prints them for an external
Redis, the chart renders the same lists (charts/redis-stream-demo/files/redis-acl.json,
written by scripts/redis_acl_json.py and checked against this module by a test), and the
system tests run the services under them on a real Redis, with a test that fails when
a client sends a command its user lacks (tests/shared/test_acl.py).

How the lists were derived: from the code (every command and every command inside its
Lua scripts and in the rate limiter's scripts), then from what the clients really send,
recorded with `ACL LOG` while the services ran under these users: redis-py's connection
set-up (AUTH, CLIENT SETNAME, CLIENT SETINFO, SELECT for a db other than 0), the cluster
client's discovery (CLUSTER SLOTS, COMMAND), script loading (EVALSHA, then SCRIPT LOAD).

Redis checks a script's own commands against the caller's rights, so the commands a
script runs are listed too. Keys are limited to the project's prefixes; within them a
static pattern cannot keep one proxy out of another proxy's reply stream (they share
one prefix): the ACL bounds what a stolen proxy password can do to the project's keys,
it does not isolate proxies from each other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.shared import contract

# The rate limiter's keys: the `limits` library prefixes every key with "LIMITS".
RATE_LIMIT_KEY_PREFIX = "LIMITS:"
# Nobody logs in as the default user (off), but it keeps every right: Redis replays the
# MULTI/EXEC blocks of its append-only file (the workers' transactions, every script's
# effects) as the default user and checks its rights again at EXEC. A default user without
# them makes a restart from the AOF drop every such block without a word, only a CRITICAL
# log line per block: acknowledgements (everything answered is worked on again), async
# results, Idempotency-Keys (redis/redis#14541, fixed in Redis after 7.x; valkey#3983).
DEFAULT_USER_OFF = "user default off resetpass allkeys allchannels +@all"

# What every client of the services sends to set up a connection and find its node:
# AUTH/HELLO, CLIENT SETNAME, CLIENT SETINFO (Redis 7.2+; named by category so that the
# rules load on 7.0 too), SELECT, PING, COMMAND, without the connection commands that
# are admin or dangerous (CLIENT KILL, CLIENT LIST, ...). The cluster client reads the
# slot map.
_CONNECTION = (
    "+@connection", "-@admin", "-@dangerous",
    "+cluster|slots", "+cluster|shards", "+cluster|info",
)
# The shard set registry (app.shared.shard_sets): its scripts' commands.
_SHARD_SETS_READ = ("+eval_ro", "+time", "+zrange")
_SHARD_SETS_WRITE = ("+eval", "+zadd", "+zscore", "+zrem")

PROXY_COMMANDS = (
    *_CONNECTION,
    "+xadd", "+wait",  # enqueue (MINID trimming is part of XADD), durable with WAIT
    "+role",  # with WAIT: whether a shard's primary has its replicas online (app.proxy.replicas)
    "+xread", "+expire",  # its reply streams, their TTL
    "+hset", "+pexpire", "+hgetall",  # async result records: written with the entry (a script), read
    "+get", "+set",  # the async horizon (a script: app.proxy.horizon)
    "+hmget",  # Idempotency-Key records (in the enqueue script; read under another shard count)
    "+xinfo|groups", "+xlen", "+xrevrange",  # admission: each shard's lag and newest entry (drain rate: +hgetall)
    "+hdel",  # admission's proof that it reads a primary: a delete of a field that does not exist
    "+hincrby", "+hlen", "+time",  # callers' counts per window (app.proxy.fairness; +hmget, +pexpire)
    *_SHARD_SETS_READ, *_SHARD_SETS_WRITE,
    # The rate limiter (moving window): its scripts, loaded on first use, and what they run.
    "+evalsha", "+script|load", "+lindex", "+lpush", "+ltrim", "+ttl",
)
WORKER_COMMANDS = (
    *_CONNECTION,
    "+xreadgroup", "+xautoclaim", "+xpending", "+xack", "+xgroup|create",
    "+xclaim",  # renewing the entries in work (a script, with +xpending: app.worker.leases)
    "+xadd", "+expire", "+wait",  # replies, dead letters
    "+multi", "+exec",  # a batch's replies and their XACK in one transaction (app.worker.outcomes)
    "+hset", "+pexpire",  # async result records, filled in by a script that checks +exists
    "+hgetall", "+hdel",  # the drain rate published for admission; quiet workers' fields removed
    "+xinfo|groups", "+xinfo|stream", "+xinfo|consumers", "+xlen", "+exists",  # metrics, shard sets
    "+evalsha", "+script|load", "+xgroup|delconsumer",  # gone consumers: a script, loaded on first use
    *_SHARD_SETS_READ, *_SHARD_SETS_WRITE,
)
# tools/monitor.py and KEDA's Redis streams scalers: read only.
MONITOR_COMMANDS = (
    *_CONNECTION,
    "+xinfo|groups", "+xinfo|stream", "+xinfo|consumers", "+xpending", "+xlen", "+exists",
    *_SHARD_SETS_READ,
)
# The Redis pod's own readiness check.
PROBE_COMMANDS = ("+ping", "+auth", "+hello")

# What no service user may run, whatever a later edit adds (checked by the tests).
FORBIDDEN = ("flushall", "flushdb", "config", "keys", "shutdown", "acl", "script|flush", "debug", "module")


@dataclass(frozen=True)
class AclUser:
    name: str
    commands: tuple[str, ...]
    # Key patterns as ACL selectors: "~p" read and write, "%R~p" read only.
    keys: tuple[str, ...]
    password_variable: str

    def rule(self, password: str) -> str:
        """The ACL SETUSER / ACL file line; the password is stored as its SHA-256 only."""
        return self.rule_for_hash(hashlib.sha256(password.encode()).hexdigest())

    def rule_for_hash(self, digest: str) -> str:
        return " ".join(["user", self.name, "reset", "on", f"#{digest}", *self.keys, "resetchannels", "-@all",
                         *self.commands])


def admin_user() -> AclUser:
    """Operators' user: every right (its own password)."""
    return AclUser("admin", ("allchannels", "+@all"), ("allkeys",), "REDIS_ACL_ADMIN_PASSWORD")


def service_keys(request_stream: str, read_only: bool = False) -> tuple[str, ...]:
    """The project's keys: the request streams (unsharded, shards, dead letters, the shard
    set registry, the async horizon), the reply streams, the async result records and the
    Idempotency-Key records."""
    mark = "%R~" if read_only else "~"
    return (f"{mark}{request_stream}", f"{mark}{request_stream}:*", f"{mark}{contract.REPLY_STREAM_PREFIX}*",
            f"{mark}{contract.RESULT_KEY_PREFIX}*", f"{mark}{contract.IDEMPOTENCY_KEY_PREFIX}*")


def users(request_stream: str) -> list[AclUser]:
    keys = service_keys(request_stream)
    return [
        AclUser("proxy", PROXY_COMMANDS, (*keys, f"~{RATE_LIMIT_KEY_PREFIX}*"), "REDIS_ACL_PROXY_PASSWORD"),
        AclUser("worker", WORKER_COMMANDS, keys, "REDIS_ACL_WORKER_PASSWORD"),
        AclUser("monitor", MONITOR_COMMANDS, service_keys(request_stream, read_only=True),
                "REDIS_ACL_MONITOR_PASSWORD"),
        AclUser("probe", PROBE_COMMANDS, (), "REDIS_ACL_PROBE_PASSWORD"),
    ]


def shared_user(request_stream: str, name: str = "stream-demo") -> AclUser:
    """One user for both services, for a managed Redis that offers a single user: the
    union of the proxy's and the worker's rights (the monitor and KEDA can use it too)."""
    proxy, worker, *_ = users(request_stream)
    commands = tuple(dict.fromkeys((*proxy.commands, *worker.commands)))
    keys = tuple(dict.fromkeys((*proxy.keys, *worker.keys)))
    return AclUser(name, commands, keys, "REDIS_ACL_SHARED_PASSWORD")
