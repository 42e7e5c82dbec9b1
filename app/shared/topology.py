"""The deployment's Redis topology, decided once: Standalone, Sentinel or Cluster.

The settings build one value of these (``build_topology``), which refuses the
combinations that cannot work, and every part of both services asks that value for
what differs between topologies: a client, the rate limiter's storage, a description
for logs, whether keys need hash tags, which node holds a key, which keys one blocking
read may name together, and how routes are refreshed after a failure. Nothing outside
this module asks which topology it runs on.

The cluster part owns redis-py's cluster traps (with StreamReadingCluster; each reproduced in
tests/shared/test_connections.py): a blocking read longer than the socket timeout is cut
off as a TimeoutError (redis/redis-py#2807), so a client that blocks is given a socket
timeout above its longest block; a READONLY answer (a demoted primary) does not refresh
the slot map, and many callers failing at once each re-read it (#4074), so refreshes go
through one rate-limited, single-flight ``refresh_routes``; its retries have no backoff,
so they are off and app.shared.resilience paces every retry.

redis is imported inside the methods that build clients, not at the top: gunicorn's
master validates the settings (and so builds the topology) before it forks, and redis
imports ssl, which gevent must patch first in the workers (MonkeyPatchWarning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    import redis
    from redis.sentinel import Sentinel as SentinelClient

    from app.shared.connections import RedisClient

# Every Redis command of the hot path answers in well under a millisecond; a
# socket that stays silent this long is a broken connection, not a slow server.
DEFAULT_SOCKET_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 2.0
# A Sentinel answers from memory; one that takes longer is skipped for the next.
SENTINEL_TIMEOUT_SECONDS = 0.5
LIMITER_TIMEOUT_SECONDS = 0.5
# How much longer than a blocking read's block its socket may stay silent.
BLOCK_MARGIN_SECONDS = 2.0


@dataclass(frozen=True)
class Topology:
    """Where Redis is and how to reach it. ``options`` are redis-py's credential and TLS
    arguments on top of the URL (never logged)."""

    url: str
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # Keys that must share a slot (a stream, its dead letters, its group) carry a hash tag.
    hash_tagged: ClassVar[bool] = False
    # Request stream shards on more than one node: a write that failed on one may succeed on another.
    shards_span_nodes: ClassVar[bool] = False

    def client(self, *, client_name: str, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
               max_connections: int | None = None, longest_block_ms: int = 0) -> RedisClient:
        """A client with its own pool (per node in a cluster); bytes in, bytes out. A client
        whose reads block up to ``longest_block_ms`` gets a socket timeout above that."""
        raise NotImplementedError

    def node_client(self, client: RedisClient, key: str) -> redis.Redis:
        """The client of the node that holds ``key`` (the client itself but in a cluster)."""
        return client  # type: ignore[return-value]

    def read_together(self, keys: list[str]) -> list[list[str]]:
        """The keys grouped so that one XREAD may name each group's keys together."""
        return [list(keys)]

    def ping_node_of(self, client: RedisClient, key: str) -> None:
        """PING the node that holds ``key``. A node that does not answer makes the routes
        be read again: its keys may have moved to a promoted replica meanwhile."""
        import redis

        try:
            self.node_client(client, key).ping()
        except (redis.ConnectionError, redis.TimeoutError):
            self.refresh_routes(client)
            raise

    def refresh_routes(self, client: RedisClient) -> None:
        """A node failed or refused a command: look again where keys live (a cluster's slot map)."""

    def ping_serving(self, client: RedisClient) -> None:
        """PING that says whether this Redis can take work (readiness, the breaker's probe)."""
        client.ping()

    def limiter_storage(self) -> tuple[str, dict[str, Any]]:
        """The `limits` storage URI and options for the same Redis (Flask-Limiter)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where Redis is, for logs: never a credential."""
        raise NotImplementedError

    def forget_idle_connections(self, client: RedisClient) -> None:
        """After WAIT fell short: the primary may have been replaced (Sentinel promotes a
        replica before it demotes the old primary), so new connections look again."""
        client.connection_pool.disconnect(inuse_connections=False)  # type: ignore[union-attr]

    def _client_options(self, client_name: str, socket_timeout: float, max_connections: int | None,
                        longest_block_ms: int = 0) -> dict[str, Any]:
        from app.shared.connections import no_retries

        if longest_block_ms:
            # An answer may take the whole block: a shorter socket timeout cuts it off (redis-py#2807).
            socket_timeout = max(socket_timeout, longest_block_ms / 1000 + BLOCK_MARGIN_SECONDS)
        return {
            "decode_responses": False,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(CONNECT_TIMEOUT_SECONDS, socket_timeout),
            "socket_keepalive": True,
            "health_check_interval": 30,
            "max_connections": max_connections,
            "client_name": client_name,
            # One policy (app.shared.resilience) decides how often and how long to retry.
            "retry": no_retries(),
            **_lean_handshake(),
            **self.options,
        }


@dataclass(frozen=True)
class Standalone(Topology):
    """One Redis, or a managed endpoint that fails over behind one address."""

    def client(self, *, client_name: str, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
               max_connections: int | None = None, longest_block_ms: int = 0) -> RedisClient:
        import redis
        from redis.exceptions import ReadOnlyError

        options = self._client_options(client_name, socket_timeout, max_connections, longest_block_ms)
        # A primary demoted behind a fixed address answers READONLY: that connection is
        # dropped, so the retry reconnects and reaches the new primary.
        return redis.Redis.from_url(self.url, retry_on_error=[ReadOnlyError], **options)

    def limiter_storage(self) -> tuple[str, dict[str, Any]]:
        return self.url, _limiter_options(self.options)

    def describe(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class Sentinel(Topology):
    """A primary found through Sentinels and followed across their failovers. The URL gives
    only the database number, credentials and TLS (rediss://) of the primary."""

    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    sentinel_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def _sentinel(self) -> SentinelClient:
        from redis.sentinel import Sentinel as SentinelClient

        from app.shared.connections import no_retries

        return SentinelClient(  # type: ignore[no-untyped-call]
            list(self.sentinels),
            sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                             "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
                             "retry": no_retries(), **_lean_handshake(), **self.sentinel_options},
        )

    @cached_property
    def _from_url(self) -> dict[str, Any]:
        from redis.connection import parse_url

        return parse_url(self.url)  # type: ignore[no-untyped-call,no-any-return]

    @property
    def database(self) -> int:
        return int(self._from_url.get("db") or 0)

    def client(self, *, client_name: str, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
               max_connections: int | None = None, longest_block_ms: int = 0) -> RedisClient:
        import redis
        from redis.exceptions import ReadOnlyError

        options = self._client_options(client_name, socket_timeout, max_connections, longest_block_ms)
        for name in ("username", "password"):
            if self._from_url.get(name) and name not in options:
                options[name] = self._from_url[name]
        if self._from_url.get("connection_class") is redis.SSLConnection:
            options["ssl"] = True
        # redis-py turns READONLY into a ConnectionError itself and asks the Sentinels again.
        client: redis.Redis = self._sentinel.master_for(  # type: ignore[no-untyped-call]
            self.master, redis_class=redis.Redis, db=self.database, retry_on_error=[ReadOnlyError], **options
        )
        return client

    def limiter_storage(self) -> tuple[str, dict[str, Any]]:
        options = _limiter_options(self.options)
        options["db"] = self.database
        options["use_replicas"] = False
        # limits sends the primary's credentials to the Sentinels unless told otherwise.
        options["sentinel_kwargs"] = {"username": None, "password": None, "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                                      **self.sentinel_options}
        return f"redis+sentinel://{_addresses(self.sentinels)}/{quote(self.master)}", options

    def describe(self) -> str:
        return f"sentinel://{_addresses(self.sentinels)}/{self.master}"


@dataclass(frozen=True)
class Cluster(Topology):
    """Redis Cluster (cluster-mode managed Redis too): the URL names any node, the client
    discovers the rest, routes each key to its slot's primary, splits pipelines per node
    and follows MOVED and ASK."""

    hash_tagged: ClassVar[bool] = True
    shards_span_nodes: ClassVar[bool] = True
    # Discovery tries these too when REDIS_URL's node does not answer.
    seeds: tuple[tuple[str, int], ...] = ()

    def client(self, *, client_name: str, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
               max_connections: int | None = None, longest_block_ms: int = 0) -> RedisClient:
        from redis.cluster import ClusterNode

        from app.shared.connections import StreamReadingCluster

        # Redirections are followed whatever the retry count; connection errors are
        # left to app.shared.resilience as in the other topologies.
        options = self._client_options(client_name, socket_timeout, max_connections, longest_block_ms)
        seeds = [ClusterNode(host, port) for host, port in self.seeds]  # type: ignore[no-untyped-call]
        return StreamReadingCluster.from_url(self.url, startup_nodes=seeds, **options)

    def node_client(self, client: RedisClient, key: str) -> redis.Redis:
        cluster: Any = client
        return cluster.get_redis_connection(cluster.get_node_from_key(key))  # type: ignore[no-any-return]

    def read_together(self, keys: list[str]) -> list[list[str]]:
        # One command may only name keys of one slot, even when one node holds several.
        from redis.crc import key_slot

        slots: dict[int, list[str]] = {}
        for key in keys:
            slots.setdefault(key_slot(key.encode()), []).append(key)
        return list(slots.values())

    def refresh_routes(self, client: RedisClient) -> None:
        client.refresh_routes()  # type: ignore[union-attr]

    def ping_serving(self, client: RedisClient) -> None:
        """Any primary answering: its shards take every request while another primary fails
        over, so one node's failure must not make every pod unready (and, behind a Service,
        turn a partial outage into a whole one). The primaries are asked at once and the first
        answer decides: asked one after another, a partitioned primary (silent until the
        socket timeout) named first would spend the whole check's time."""
        import gevent
        import redis

        def failure_of(node: Any) -> Exception | None:
            # Returned, not raised: a greenlet's uncaught error would be printed as a crash.
            try:
                cluster.get_redis_connection(node).ping()
            except Exception as error:
                return error
            return None

        cluster: Any = client
        pings = [gevent.spawn(failure_of, node) for node in cluster.get_primaries()]
        failure: Exception | None = None
        try:
            for ping in gevent.iwait(pings):
                failure = ping.value
                if failure is None:
                    return
                if not isinstance(failure, redis.ConnectionError | redis.TimeoutError):
                    raise failure
        finally:
            gevent.killall(pings, block=False)  # the silent ones: nobody waits for them
        self.refresh_routes(client)
        raise failure or redis.ConnectionError("the cluster's slot map names no primary")

    def limiter_storage(self) -> tuple[str, dict[str, Any]]:
        url = urlsplit(self.url)
        options = _limiter_options(self.options)
        if url.scheme == "rediss":
            options["ssl"] = True
        seeds = "".join(f",{host}:{port}" for host, port in self.seeds)
        return f"redis+cluster://{url.netloc}{seeds}", options

    def describe(self) -> str:
        return "cluster+" + redact_url(self.url)


def build_topology(
    *,
    url: str,
    options: dict[str, Any],
    sentinels: list[tuple[str, int]],
    sentinel_master: str,
    sentinel_options: dict[str, Any],
    cluster: bool,
    cluster_nodes: list[tuple[str, int]] | None = None,
) -> Topology:
    """The topology the settings describe; ValueError naming the variables for one that cannot work."""
    if cluster and sentinels:
        raise ValueError("REDIS_CLUSTER and REDIS_SENTINELS exclude each other: a cluster fails over on its own")
    if cluster_nodes and not cluster:
        raise ValueError("REDIS_CLUSTER_NODES needs REDIS_CLUSTER=true")
    if sentinels:
        return Sentinel(url, options, tuple(sentinels), sentinel_master, sentinel_options)
    if not cluster:
        return Standalone(url, options)
    parts = urlsplit(url)
    if parts.scheme == "unix" or parts.path.strip("/") not in ("", "0"):
        raise ValueError("REDIS_URL must be redis:// or rediss:// with database 0 (or none) with REDIS_CLUSTER")
    return Cluster(url, options, tuple(cluster_nodes or ()))


def _addresses(pairs: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{host}:{port}" for host, port in pairs)


def _limiter_options(options: dict[str, Any]) -> dict[str, Any]:
    return {**options, **_lean_handshake(), "socket_timeout": LIMITER_TIMEOUT_SECONDS,
            "socket_connect_timeout": LIMITER_TIMEOUT_SECONDS}


def _lean_handshake() -> dict[str, Any]:
    """A new connection's handshake without the round trips we do not use, each one an error
    in Redis's errorstats where Redis refuses it, a burst of them after every failover:
    maintenance notices (a managed service's; a self-run Redis does not know the command) and
    the library's name and version (CLIENT SETINFO, Redis 7.2+; CLIENT SETNAME already says
    which service and role a connection is)."""
    from redis.maint_notifications import MaintNotificationsConfig

    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False), "driver_info": None}


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}"
