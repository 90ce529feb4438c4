"""Secrets: `<kind>_<8 hex public prefix>_<token_urlsafe(32)>`, stored as SHA-256.

Keys are high-entropy random values, so a fast hash is the right choice; the
stored digest is compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

API_KEY = "crl"
HOST_TOKEN = "crh"
_SHAPE = re.compile(r"^(crl|crh)_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Secret:
    value: str  # shown once, never stored or logged
    prefix: str  # visible part, e.g. "crl_1a2b3c4d"
    digest: str  # sha256 hex of value

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"Secret(prefix={self.prefix!r})"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def mint(kind: str) -> Secret:
    if kind not in (API_KEY, HOST_TOKEN):
        raise ValueError("unknown secret kind")
    prefix = f"{kind}_{secrets.token_hex(4)}"
    value = f"{prefix}_{secrets.token_urlsafe(32)}"
    return Secret(value=value, prefix=prefix, digest=digest(value))


def visible_prefix(value: str, kind: str) -> str | None:
    """The public prefix of a well-formed secret of `kind`, else None."""
    m = _SHAPE.match(value)
    if not m or m.group(1) != kind:
        return None
    return f"{m.group(1)}_{m.group(2)}"


def matches(value: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(value), stored_digest)
