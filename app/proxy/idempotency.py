"""The Idempotency-Key header (IETF httpapi idempotency-key draft) as this API reads it:
which caller's key it is, and what identifies the request it came with."""

from __future__ import annotations

import hashlib
import re

from app.proxy.errors import ApiError

HEADER = "Idempotency-Key"
# Visible ASCII and spaces, so a key is safe in logs; the draft leaves the syntax to the server.
_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def fingerprint(key: str, subject: str, client_address: str) -> str:
    """A key is the caller's own: scoped by the JWT subject when authenticated, else by the
    client's address (weaker: callers behind one NAT share it, and a caller whose address
    changes loses its keys)."""
    if not _KEY.fullmatch(key):
        raise ApiError(400, "invalid_idempotency_key",
                       f"{HEADER} must be 1-255 printable ASCII characters (space included)")
    scope = f"sub:{subject}" if subject else f"addr:{client_address}"
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()


def body_hash(city: str, location: str) -> str:
    """The request as validated, so that JSON spacing or member order do not make it another."""
    return hashlib.sha256(f"{city}\0{location}".encode()).hexdigest()[:32]
