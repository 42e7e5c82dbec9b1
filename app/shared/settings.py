"""Settings shared by both services, and the one way a service loads its settings.

Every field reads the environment variable of the same name in upper case
(``redis_url`` <- ``REDIS_URL``). A bad value stops the process with a message that
names the variable, before anything connects anywhere.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.shared import contract
from app.shared.topology import Topology, build_topology


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_tries: int
    base_seconds: float
    max_seconds: float


StreamKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]


def parse_host_ports(text: str) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` (IPv6 as ``[::1]:26379``) into pairs; empty text gives none."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{item!r} is not host:port")
        addresses.append((host, int(port_text)))
    return addresses


class ConfigError(SystemExit):
    """Raised instead of starting with a bad configuration; exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _credentials(username: str | None, password: SecretStr | None) -> dict[str, Any]:
    """redis-py's username/password arguments, leaving out what is not set."""
    options: dict[str, Any] = {}
    if username:
        options["username"] = username
    if password is not None:
        options["password"] = password.get_secret_value()
    return options


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    redis_url: str = "redis://localhost:6379/0"
    # Credentials and TLS files kept out of the URL, so they can come from Secrets.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls_ca_file: FilePath | None = None
    redis_tls_cert_file: FilePath | None = None
    redis_tls_key_file: FilePath | None = None
    # Sentinel mode when set: "host:port,host:port". The primary is asked of the Sentinels;
    # REDIS_URL then only gives the database number (and TLS to the primary with rediss://).
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = Field(default="mymaster", min_length=1, pattern=r"^[^\s]+$")
    # The Sentinels' own credentials and TLS (their ACL is separate from the primary's).
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_sentinel_tls: bool = False
    # Redis Cluster (cluster-mode managed Redis too): REDIS_URL names any node; the
    # client discovers the rest and follows MOVED/ASK redirections.
    redis_cluster: bool = False
    # More nodes to discover the cluster from, "host:port,host:port": with REDIS_URL naming
    # one node, a process (re)starting while that node is down could not find the others.
    redis_cluster_nodes: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    # Durable writes: each enqueue (and each reply + ack) is confirmed by WAIT on this many
    # replicas within REDIS_WAIT_TIMEOUT_MS, or counts as a failed try.
    redis_wait_replicas: Annotated[int, Field(ge=0, le=16)] = 0
    redis_wait_timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 100
    request_stream: StreamKey = contract.DEFAULT_REQUEST_STREAM
    # The workers' consumer group: its lag is the backlog proxies admit requests by.
    consumer_group: StreamKey = contract.DEFAULT_CONSUMER_GROUP
    # Above 1 (or in cluster mode) the requests go to N streams REQUEST_STREAM:{tag},
    # each in a slot of its own, spread over the cluster's primaries.
    request_stream_shards: Annotated[int, Field(ge=1, le=64)] = 1
    # Proxies announce their REQUEST_STREAM_SHARDS this often; workers read every announced
    # shard set and retire one unannounced for 3 intervals once drained (app.shared.shard_sets).
    # Proxies and workers must use the same value.
    shard_set_announce_seconds: Annotated[float, Field(ge=0.1, le=300)] = 10.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    bind_host: str = Field(default="0.0.0.0", min_length=1)
    # Retries of one Redis operation on connection and timeout errors (never on data errors).
    redis_retry_max_tries: Annotated[int, Field(ge=1, le=20)] = 3
    redis_retry_base_seconds: Annotated[float, Field(gt=0, le=10)] = 0.1
    redis_retry_max_seconds: Annotated[float, Field(gt=0, le=300)] = 30.0
    # Longest pause between attempts of the long-running loops while Redis is down.
    # While the breaker is open the loops probe Redis at this pace, so it closes within
    # about this long after Redis answers again, not only after CIRCUIT_RESET_SECONDS.
    redis_reconnect_max_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # The breaker opens after this many consecutive failed operations ...
    circuit_failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    # ... and lets a trial operation through after this long.
    circuit_reset_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_sentinels", "redis_cluster_nodes", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        return parse_host_ports(value) if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("must name a host")
        try:
            parts.port  # noqa: B018 - urlsplit validates the port lazily
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        return value

    @model_validator(mode="after")
    def _consistent_topology(self) -> CommonSettings:
        self.topology  # noqa: B018 - built once here, so a topology that cannot work stops the start
        if self.sharded and ("{" in self.request_stream or "}" in self.request_stream):
            raise ValueError("REQUEST_STREAM must not contain { or }: the shards add their own hash tags")
        return self

    @cached_property
    def topology(self) -> Topology:
        return build_topology(
            url=self.redis_url, options=self.redis_options(), sentinels=self.redis_sentinels,
            sentinel_master=self.redis_sentinel_master, sentinel_options=self.sentinel_options(),
            cluster=self.redis_cluster, cluster_nodes=self.redis_cluster_nodes,
        )

    @property
    def sharded(self) -> bool:
        """Keys carry hash tags: several shards, or a topology whose slots need them."""
        return self.topology.hash_tagged or self.request_stream_shards > 1

    @property
    def request_streams(self) -> list[str]:
        return contract.request_streams(self.request_stream, self.request_stream_shards, self.topology.hash_tagged)

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py on top of the URL."""
        options = _credentials(self.redis_username, self.redis_password)
        if self.redis_tls_ca_file:
            options["ssl_ca_certs"] = str(self.redis_tls_ca_file)
        if self.redis_tls_cert_file:
            options["ssl_certfile"] = str(self.redis_tls_cert_file)
        if self.redis_tls_key_file:
            options["ssl_keyfile"] = str(self.redis_tls_key_file)
        return options

    def sentinel_options(self) -> dict[str, Any]:
        """Keyword arguments for the connections to the Sentinels themselves."""
        options = _credentials(self.redis_sentinel_username, self.redis_sentinel_password)
        if self.redis_sentinel_tls:
            options["ssl"] = True
            options.update({k: v for k, v in self.redis_options().items() if k.startswith("ssl_")})
        return options

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.redis_retry_max_tries, self.redis_retry_base_seconds, self.redis_retry_max_seconds)


S = TypeVar("S", bound=BaseSettings)

# Values of these variables may hold credentials, so an error never echoes them.
_SECRET_HINTS = re.compile(r"URL|PASSWORD|SECRET|TOKEN|KEY")


def describe_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        if not item["loc"]:
            # A rule across variables: its message names them; the input is every variable.
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        variable = "_".join(str(part) for part in item["loc"]).upper()
        shown = "<redacted>" if _SECRET_HINTS.search(variable) else repr(item.get("input"))
        lines.append(f"{variable}: {item['msg']} (got {shown})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(cls: type[S]) -> S:
    """Build the settings object or raise ConfigError naming every bad variable."""
    try:
        return cls()
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def load_settings_or_exit(cls: type[S]) -> S:
    try:
        return load_settings(cls)
    except ConfigError as error:
        print(error.message, file=sys.stderr, flush=True)
        raise
