"""The proxy's settings, read from the environment and validated at start."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from app.shared.settings import CommonSettings, Port

JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"]


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["HS256"]


class ProxySettings(CommonSettings):
    port: Port = 8080
    # /metrics is served here, never on the API port (an Ingress routes only that).
    metrics_port: Port = 9101
    # /docs and /openapi.json on the API port: the chart turns them off behind an Ingress.
    docs_enabled: bool = True
    request_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Prefer: respond-async / wait=N: such work may wait this long to be done (0 turns them off:
    # the preferences are then ignored). The request streams keep every entry this long (their
    # MINID trimming), so their memory grows with it; every proxy must use the same value.
    async_deadline_seconds: Annotated[float, Field(ge=0, le=7 * 86_400)] = 3600.0
    # A finished async request's result is kept this long for GET /WeatherForecast/requests/{id}.
    result_ttl_seconds: Annotated[float, Field(ge=1, le=7 * 86_400)] = 300.0
    # A request with an Idempotency-Key is done at most once per key and caller this long;
    # its result is kept as long as its key.
    idempotency_ttl_seconds: Annotated[float, Field(ge=1, le=30 * 86_400)] = 86_400.0
    # gunicorn worker processes; each owns one reply stream and one listener.
    web_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    # Concurrent connections per gevent worker process.
    worker_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # Connections each proxy process may open to Redis for enqueuing (the listener has its own).
    redis_max_connections: Annotated[int, Field(ge=1, le=10_000)] = 200
    # One JSON log line per HTTP request (gunicorn's access log).
    access_log: bool = False
    # A caller is waiting: retry briefly, then answer 503 (never past the request's deadline).
    redis_retry_base_seconds: Annotated[float, Field(gt=0, le=10)] = 0.05
    redis_retry_max_seconds: Annotated[float, Field(gt=0, le=300)] = 1.0
    # Requests one proxy process may hold waiting for replies; past it, 503 at once, so a
    # flood cannot exhaust greenlets, memory or Redis connections.
    max_inflight_per_process: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Admission by expected wait (app.proxy.admission): a request is queued only when the
    # backlog ahead of it, at the rate the workers drain it, plus its work fits within this
    # share of its deadline (REQUEST_TIMEOUT_SECONDS, or ASYNC_DEADLINE_SECONDS for async);
    # else 503 over_capacity with Retry-After at once. false: only MAX_INFLIGHT_PER_PROCESS limits.
    admission_enabled: bool = True
    admission_wait_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    # Once a shard's queue has not been empty for a second (overload, not a burst), a
    # synchronous request of default or lower urgency may take only this share of its
    # deadline: the queue stays short, and latency recovers soon after the overload.
    admission_standing_share: Annotated[float, Field(gt=0, le=1)] = 0.1
    # Entries per shard admitted while no worker has published a drain rate (none running
    # yet, scale from zero): enough to wake an autoscaler, no more.
    admission_cold_backlog: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    # Who a caller is, for its fair share of the workers (app.proxy.fairness) and the rate
    # limiter: the JWT subject, else this header's value (an API key a gateway in front sets;
    # empty: none), else the client address (TRUSTED_PROXIES).
    caller_header: str = ""
    # Callers whose urgent requests (Priority u<=2) take the prompt lane beyond their share,
    # comma-separated as the proxy names them: sub:<subject>, key:<header value>, ip:<address>.
    priority_trusted_callers: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Flask-Limiter limits, e.g. "100/minute;10/second"; empty turns rate limiting off.
    rate_limit: str = ""
    # X-Forwarded-For hops set by trusted proxies in front (ingress, load balancer).
    trusted_proxies: Annotated[int, Field(ge=0, le=10)] = 0

    # JWT authentication of the API (probes and /metrics stay open).
    auth_jwt_enabled: bool = False
    # Comma-separated, e.g. "RS256" or "HS256,HS512".
    auth_jwt_algorithms: Annotated[list[JwtAlgorithm], NoDecode] = Field(default_factory=_default_algorithms)
    auth_jwt_secret: SecretStr | None = None
    auth_jwt_public_key_file: FilePath | None = None
    # The identity provider's JWKS document (https; http only to a loopback address).
    auth_jwt_jwks_url: str | None = None
    # A token naming an unknown key fetches the document again at most this often.
    auth_jwt_jwks_min_refresh_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_leeway_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0

    @field_validator("auth_jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("priority_trusted_callers", mode="before")
    @classmethod
    def _split_callers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        callers = [part.strip() for part in value.split(",") if part.strip()]
        for caller in callers:
            if not caller.startswith(("sub:", "key:", "ip:")):
                raise ValueError(f"{caller!r} must be sub:<subject>, key:<header value> or ip:<address>")
        return callers

    @field_validator("caller_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
            raise ValueError("must be an HTTP header name")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _parse_rate_limit(cls, value: str) -> str:
        if value.strip():
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError as error:
                raise ValueError(f'must look like "100/minute;10/second": {error}') from None
        return value.strip()

    @model_validator(mode="after")
    def _ports_differ(self) -> ProxySettings:
        if self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT: the metrics are served apart from the API")
        return self

    @model_validator(mode="after")
    def _jwt_key_present(self) -> ProxySettings:
        if not self.auth_jwt_enabled:
            return self
        symmetric = any(a.startswith("HS") for a in self.auth_jwt_algorithms)
        asymmetric = any(not a.startswith("HS") for a in self.auth_jwt_algorithms)
        if symmetric and asymmetric:
            raise ValueError("AUTH_JWT_ALGORITHMS must be all HS* (shared secret) or all RS*/ES* (public key)")
        if symmetric and not self.auth_jwt_secret:
            raise ValueError("AUTH_JWT_ENABLED with HS* algorithms needs AUTH_JWT_SECRET")
        if self.auth_jwt_jwks_url:
            if symmetric:
                raise ValueError("AUTH_JWT_JWKS_URL needs RS*/ES* AUTH_JWT_ALGORITHMS")
            if self.auth_jwt_public_key_file:
                raise ValueError("AUTH_JWT_JWKS_URL and AUTH_JWT_PUBLIC_KEY_FILE exclude each other: set one")
            if not (self.auth_jwt_issuer and self.auth_jwt_audience):
                # A provider's key set signs the tokens of many tenants and applications.
                raise ValueError("AUTH_JWT_JWKS_URL needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE")
            return self
        if asymmetric and not self.auth_jwt_public_key_file:
            raise ValueError("AUTH_JWT_ENABLED with RS*/ES* algorithms needs AUTH_JWT_PUBLIC_KEY_FILE "
                             "or AUTH_JWT_JWKS_URL")
        return self

    @field_validator("auth_jwt_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
            return value
        raise ValueError("must be https:// (plain http only to a loopback address)")

    def jwt_key(self) -> str | Callable[[str], Any]:
        """The key that checks tokens: a function of the token with JWKS."""
        if self.auth_jwt_jwks_url:
            from app.proxy.jwks import JwksKeys

            return JwksKeys(self.auth_jwt_jwks_url,
                            min_refresh_seconds=self.auth_jwt_jwks_min_refresh_seconds).key_for
        if self.auth_jwt_public_key_file:
            return Path(self.auth_jwt_public_key_file).read_text()
        return self.auth_jwt_secret.get_secret_value() if self.auth_jwt_secret else ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
