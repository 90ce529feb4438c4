"""Orgs, API keys and host tokens: plain records plus the rules about them."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from common.timefmt import utc_text

from . import credentials
from .errors import Invalid, Unauthorized

SCOPES = ("org", "admin")


def new_id() -> str:
    # ids land in NATS subjects and durable names: no dots, no wildcards
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    created_at: str


@dataclass(frozen=True)
class ApiKey:
    id: str
    prefix: str
    digest: str
    name: str
    scope: str
    org_id: str | None
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class HostToken:
    id: str
    prefix: str
    digest: str
    name: str
    host_id: str
    created_at: str
    revoked_at: str | None = None
    hostname: str | None = None
    registered_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def new_org(name: str, now: datetime) -> Org:
    if not name or len(name) > 100 or name != name.strip():
        raise Invalid("org name must be 1-100 chars without surrounding spaces")
    return Org(id=new_id(), name=name, created_at=utc_text(now))


def new_api_key(name: str, scope: str, org_id: str | None,
                now: datetime) -> tuple[ApiKey, credentials.Secret]:
    """An org key belongs to exactly one org; an admin key to none."""
    if scope not in SCOPES:
        raise Invalid("scope must be 'org' or 'admin'")
    if scope == "org" and not org_id:
        raise Invalid("an org key needs org_id")
    if scope == "admin" and org_id:
        raise Invalid("an admin key has no org_id")
    secret = credentials.mint(credentials.API_KEY)
    key = ApiKey(id=new_id(), prefix=secret.prefix, digest=secret.digest, name=name,
                 scope=scope, org_id=org_id, created_at=utc_text(now))
    return key, secret


def new_host_token(name: str, now: datetime,
                   host_id: str | None = None) -> tuple[HostToken, credentials.Secret]:
    """The server assigns the host id; `host_id` only carries one over on rotation."""
    secret = credentials.mint(credentials.HOST_TOKEN)
    tok = HostToken(id=new_id(), prefix=secret.prefix, digest=secret.digest, name=name,
                    host_id=host_id or new_id(), created_at=utc_text(now))
    return tok, secret


def authenticate(value: str, candidates: Sequence[ApiKey | HostToken]) -> ApiKey | HostToken:
    """The active record among `candidates` (same prefix) whose digest matches.

    Every candidate is compared, in constant time, so timing reveals nothing
    about which one matched or whether it was revoked.
    """
    found = None
    for c in candidates:
        if credentials.matches(value, c.digest) and found is None:
            found = c
    if found is None or not found.active:
        raise Unauthorized("invalid or revoked credential")
    return found
