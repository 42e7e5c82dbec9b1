"""Bearer-token (JWT) authentication of the API, off unless AUTH_JWT_ENABLED.

PyJWT checks the signature, requires `exp`, and checks `aud` and `iss` when they are
configured, with a small leeway for clock skew. The key is a shared secret, a public key
file, or the identity provider's published keys (JWKS, app.proxy.jwks). The token's subject travels in the
stream entry so the worker can log who asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt

from app.proxy.errors import ApiError


class JwtAuthenticator:
    def __init__(self, key: str | Callable[[str], Any], algorithms: list[str], *, audience: str | None,
                 issuer: str | None, leeway_seconds: float) -> None:
        """``key``: the shared secret or public key, or the function that finds a token's
        key (app.proxy.jwks). The algorithms are always these, never the token's alone."""
        self._key = key if callable(key) else lambda _token: key
        self._algorithms = algorithms
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway_seconds
        required = ["exp"] + (["aud"] if self._audience else []) + (["iss"] if self._issuer else [])
        self._options: Any = {"require": required}

    def subject(self, authorization: str | None) -> str:
        """The token's `sub` (or "" when it has none); raises a 401 ApiError otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("missing_token", "send Authorization: Bearer <token>")
        try:
            claims = jwt.decode(
                token.strip(), self._key(token.strip()), algorithms=self._algorithms, audience=self._audience,
                issuer=self._issuer, leeway=self._leeway, options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("invalid_token", "the token has expired") from None
        except jwt.InvalidTokenError as error:
            raise _unauthorized("invalid_token", f"the token was refused: {error}") from None
        subject = claims.get("sub", "")
        return subject if isinstance(subject, str) else str(subject)


def _unauthorized(code: str, detail: str) -> ApiError:
    challenge = 'Bearer realm="redis-stream-demo"'
    if code == "invalid_token":
        challenge += ', error="invalid_token"'
    return ApiError(401, "unauthorized", detail, {"WWW-Authenticate": challenge})
