"""Redis clients for both services: the one place that knows the topology.

Standalone (or a managed endpoint), Sentinel and Cluster are decided here, from the
settings, and nowhere else: the services ask a ``RedisConnector`` for clients and
never look at the topology themselves. A cluster client has the standalone client's
commands and pipelines; it routes each key to the primary of its slot, splits a
pipeline per node and follows MOVED and ASK redirections (a slot being resharded).

redis-py retries on its own by default. Both services switch that off so that one
policy (app.shared.resilience) decides how often and how long to retry, and the
circuit breaker sees every failure.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import ReadOnlyError
from redis.retry import Retry
from redis.sentinel import Sentinel

from app.shared.settings import CommonSettings

# Every Redis command of the hot path answers in well under a millisecond; a
# socket that stays silent this long is a broken connection, not a slow server.
DEFAULT_SOCKET_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 2.0
# Readiness means Redis answers PING within this; both services probe the same way.
READINESS_PING_TIMEOUT_SECONDS = 0.5
# A Sentinel answers from memory; one that takes longer is skipped for the next.
SENTINEL_TIMEOUT_SECONDS = 0.5


# What the services hold: either client answers the same commands.
RedisClient: TypeAlias = redis.Redis | redis.RedisCluster

_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})


class StreamReadingCluster(redis.RedisCluster):
    """redis-py asks the server (COMMAND GETKEYS, one more round trip to one node) for
    the keys of every command whose keys move, as XREAD and XREADGROUP's do: measured,
    that was 1.4 extra commands per request, all on one primary. Their keys follow
    STREAMS, so the slot is found here without asking."""

    def determine_slot(self, *args: Any) -> int | None:
        if str(args[0]).upper() in _STREAM_READS:
            words = [arg.upper() if isinstance(arg, bytes) else str(arg).upper().encode() for arg in args]
            if b"STREAMS" in words:
                after = args[words.index(b"STREAMS") + 1:]
                slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in after[:len(after) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        slot: int | None = super().determine_slot(*args)
        return slot


def _no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


class RedisConnector:
    """Builds every Redis client of one process from its settings."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        # Database number, URL credentials and TLS, which Sentinel mode takes from REDIS_URL.
        self._from_url: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        self._sentinel: Sentinel | None = None
        if settings.redis_sentinels:
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                settings.redis_sentinels,
                sentinel_kwargs={
                    "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                    "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
                    "retry": _no_retries(),
                    **settings.sentinel_options(),
                },
            )

    @property
    def sentinel_mode(self) -> bool:
        return self._sentinel is not None

    def client(
        self,
        *,
        client_name: str,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
        max_connections: int | None = None,
    ) -> RedisClient:
        """A client with its own pool (per node in a cluster); bytes in, bytes out."""
        options: dict[str, Any] = {
            "decode_responses": False,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(CONNECT_TIMEOUT_SECONDS, socket_timeout),
            "socket_keepalive": True,
            "health_check_interval": 30,
            "max_connections": max_connections,
            "client_name": client_name,
            **self.settings.redis_options(),
        }
        if self.settings.redis_cluster:
            # Redirections are followed whatever the retry count; connection errors are
            # left to app.shared.resilience as in the other modes.
            return StreamReadingCluster.from_url(self.settings.redis_url, retry=_no_retries(), **options)
        options.update({
            "retry": _no_retries(),
            # A primary demoted behind a fixed address (a managed endpoint, a Service)
            # answers READONLY: that connection is dropped, so the retry reconnects
            # and reaches the new primary. In Sentinel mode redis-py turns READONLY
            # into a ConnectionError itself and asks the Sentinels again.
            "retry_on_error": [ReadOnlyError],
        })
        if self._sentinel is None:
            return redis.Redis.from_url(self.settings.redis_url, **options)
        for name in ("username", "password"):
            if self._from_url.get(name) and name not in options:
                options[name] = self._from_url[name]
        if self._from_url.get("connection_class") is redis.SSLConnection:
            options["ssl"] = True
        client: redis.Redis = self._sentinel.master_for(  # type: ignore[no-untyped-call]
            self.settings.redis_sentinel_master, redis_class=redis.Redis, db=self._database(), **options
        )
        return client

    def _database(self) -> int:
        return int(self._from_url.get("db") or 0)

    def limiter_storage(self) -> tuple[str, dict[str, Any]]:
        """The `limits` storage URI and options for the same Redis (Flask-Limiter)."""
        options: dict[str, Any] = {**self.settings.redis_options(), "socket_timeout": 0.5,
                                   "socket_connect_timeout": 0.5}
        if self.settings.redis_cluster:
            url = urlsplit(self.settings.redis_url)
            if url.scheme == "rediss":
                options["ssl"] = True
            return f"redis+cluster://{url.netloc}", options
        if self._sentinel is None:
            return self.settings.redis_url, options
        locations = ",".join(f"{host}:{port}" for host, port in self.settings.redis_sentinels)
        options["db"] = self._database()
        options["use_replicas"] = False
        # limits sends the primary's credentials to the Sentinels unless told otherwise.
        options["sentinel_kwargs"] = {"username": None, "password": None, "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                                      **self.settings.sentinel_options()}
        return f"redis+sentinel://{locations}/{quote(self.settings.redis_sentinel_master)}", options

    def describe(self) -> str:
        """Where Redis is, for logs: never a credential."""
        if self.settings.redis_cluster:
            return "cluster+" + redact_url(self.settings.redis_url)
        if self._sentinel is None:
            return redact_url(self.settings.redis_url)
        sentinels = ",".join(f"{host}:{port}" for host, port in self.settings.redis_sentinels)
        return f"sentinel://{sentinels}/{self.settings.redis_sentinel_master}"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}"
