"""Auth use cases. Secrets are returned once and never logged."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from common.timefmt import utc_text

from ..domain import credentials
from ..domain.errors import Invalid, NotFound, Unauthorized
from ..domain.model import (ApiKey, HostToken, Org, authenticate, new_api_key, new_host_token,
                            new_org)
from .ports import Clock, RevocationNotifier, UnitOfWork

log = logging.getLogger("corral.auth")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str


@dataclass(frozen=True)
class IssuedHostToken:
    token: HostToken
    secret: str


class AuthService:
    def __init__(self, uow: UnitOfWork, notifier: RevocationNotifier | None = None,
                 clock: Clock = utcnow):
        self.uow = uow
        self.notifier = notifier
        self.clock = clock

    async def verify(self, raw: str) -> ApiKey:
        prefix = credentials.visible_prefix(raw, credentials.API_KEY)
        if prefix is None:
            raise Unauthorized("invalid or revoked credential")
        async with self.uow.tx() as repo:
            candidates = await repo.api_keys_with_prefix(prefix)
        found = authenticate(raw, candidates)
        assert isinstance(found, ApiKey)
        return found

    async def require_admin(self, raw: str) -> ApiKey:
        """The caller of an administration call must hold an active admin key."""
        key = await self.verify(raw)
        if key.scope != "admin":
            raise Unauthorized("an admin key is required")
        return key

    async def host_token(self, raw: str) -> HostToken:
        """The active host token `raw` is (no side effects: used per connection)."""
        prefix = credentials.visible_prefix(raw, credentials.HOST_TOKEN)
        if prefix is None:
            raise Unauthorized("invalid or revoked credential")
        async with self.uow.tx() as repo:
            found = authenticate(raw, await repo.host_tokens_with_prefix(prefix))
        assert isinstance(found, HostToken)
        return found

    async def revoke_host(self, host_id: str, op_id: str) -> tuple[int, int]:
        """Revoke every token of the host (it can no longer connect), announce it
        and cut its connections: (tokens revoked, connections cut). Idempotent."""
        async with self.uow.tx() as repo:
            tokens = await repo.active_host_tokens_of(host_id)
            for tok in tokens:
                await repo.revoke_host_token(tok.id, utc_text(self.clock()))
        log.info("revoked %d token(s) of host %s", len(tokens), host_id,
                 extra={"host_id": host_id})
        cut = await self.notifier.host_revoked(host_id, op_id) if self.notifier else 0
        return len(tokens), cut

    async def create_org(self, name: str) -> Org:
        org = new_org(name, self.clock())
        async with self.uow.tx() as repo:
            await repo.add_org(org)
        log.info("created org %s", org.id)
        return org

    async def create_key(self, name: str, scope: str, org_id: str | None) -> IssuedKey:
        key, secret = new_api_key(name, scope, org_id, self.clock())
        async with self.uow.tx() as repo:
            if org_id is not None and await repo.get_org(org_id) is None:
                raise NotFound("no such org")
            await repo.add_api_key(key)
        log.info("created %s api key %s (%s)", scope, key.id, key.prefix)
        return IssuedKey(key, secret.value)

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Idempotent: revoking a revoked key succeeds and broadcasts again."""
        async with self.uow.tx() as repo:
            if await repo.get_api_key(key_id) is None:
                raise NotFound("no such api key")
            await repo.revoke_api_key(key_id, utc_text(self.clock()))
            key = await repo.get_api_key(key_id)
        assert key is not None
        log.info("revoked api key %s", key_id)
        if self.notifier:
            await self.notifier.key_revoked(key_id)
        return key

    async def create_host_token(self, name: str) -> IssuedHostToken:
        tok, secret = new_host_token(name, self.clock())
        async with self.uow.tx() as repo:
            await repo.add_host_token(tok)
        log.info("created host token %s for host %s", tok.prefix, tok.host_id)
        return IssuedHostToken(tok, secret.value)

    async def register_host(self, raw: str, hostname: str) -> HostToken:
        """The host's id comes from its token, never from the host."""
        prefix = credentials.visible_prefix(raw, credentials.HOST_TOKEN)
        if prefix is None:
            raise Unauthorized("invalid or revoked credential")
        if len(hostname) > 253:
            raise Invalid("hostname too long")
        async with self.uow.tx() as repo:
            found = authenticate(raw, await repo.host_tokens_with_prefix(prefix))
            assert isinstance(found, HostToken)
            await repo.mark_registered(found.id, hostname, utc_text(self.clock()))
        log.info("host %s registered", found.host_id, extra={"host_id": found.host_id})
        return found
