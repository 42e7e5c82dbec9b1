"""The identity provider's signing keys, from its JWKS document (AUTH_JWT_JWKS_URL).

PyJWT's PyJWKClient fetches and parses the document; this keeps the last good key set
and decides when to fetch again: when a token names a key (kid) not in the set, i.e. the
provider rotated its keys, or when the set is older than MAX_AGE_SECONDS; never more
often than AUTH_JWT_JWKS_MIN_REFRESH_SECONDS, so a flood of tokens with made-up kids
cannot hammer the provider. When a fetch fails the last good set is kept: a provider
briefly unreachable does not stop authentication.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jwt

log = logging.getLogger("app.proxy.auth")

# Providers rotate keys over days; an hour-old set still holds every key in use.
MAX_AGE_SECONDS = 3600.0
FETCH_TIMEOUT_SECONDS = 5.0


class UnknownSigningKey(jwt.InvalidTokenError):
    """The token names no key of the provider's (or the provider's keys are not available)."""


class JwksKeys:
    def __init__(self, url: str, *, min_refresh_seconds: float, max_age_seconds: float = MAX_AGE_SECONDS) -> None:
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_SECONDS)
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()
        self.fetches = 0

    def key_for(self, token: str) -> Any:
        """The public key that signed ``token``, by its header's kid."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError as error:
            raise UnknownSigningKey(f"the token cannot be read: {error}") from None
        if not isinstance(kid, str) or not kid:
            raise UnknownSigningKey("the token names no signing key (kid)")
        stale = self._fetched_at is None or time.monotonic() - self._fetched_at > self._max_age
        if kid not in self._keys or stale:
            self._refresh()
        key = self._keys.get(kid)
        if key is None:
            if self._fetched_at is None:
                raise UnknownSigningKey("the identity provider's signing keys are not available")
            raise UnknownSigningKey("the token's signing key (kid) is not one the identity provider publishes")
        return key.key

    def _refresh(self) -> None:
        with self._lock:  # one fetch at a time; the others find its result
            if time.monotonic() - self._attempted_at < self._min_refresh:
                return
            self._attempted_at = time.monotonic()
            self.fetches += 1
            try:
                jwk_set = self._client.get_jwk_set(refresh=True)
            except jwt.PyJWTError as error:
                log.warning("the identity provider's keys could not be fetched; the last good ones stay in use",
                            extra={"jwks_url": self._client.uri, "error": str(error),
                                   "cached_keys": len(self._keys)})
                return
            self._keys = {key.key_id: key for key in jwk_set.keys if key.key_id}
            self._fetched_at = time.monotonic()
            log.info("identity provider keys fetched", extra={"jwks_url": self._client.uri,
                                                              "kids": sorted(self._keys)})
