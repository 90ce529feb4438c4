"""`bootstrap` for dev stacks: an org, its key, an admin key and a host token.

Idempotent for the org name: the org and the host id are reused. Secrets are
stored hashed and cannot be shown again, so a rerun rotates them: the previous
bootstrap keys/token are revoked and fresh ones issued (same host id).
"""
from __future__ import annotations

from dataclasses import dataclass

from common.timefmt import utc_text

from ..domain.errors import Conflict
from ..domain.model import new_api_key, new_host_token, new_org
from .service import AuthService


@dataclass(frozen=True)
class Provisioned:
    org_id: str
    api_key: str
    admin_key: str
    host_token: str
    host_id: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


async def provision(svc: AuthService, org_name: str, attempts: int = 3) -> Provisioned:
    for i in range(attempts):
        try:
            return await _provision(svc, org_name)
        except Conflict:  # another bootstrap created the org first: reuse it
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def _provision(svc: AuthService, org_name: str) -> Provisioned:
    now = svc.clock()
    at = utc_text(now)
    tag = f"bootstrap/{org_name}"[:100]
    async with svc.uow.tx() as repo:
        org = await repo.org_by_name(org_name)
        if org is None:
            org = new_org(org_name, now)
            await repo.add_org(org)
        for old in await repo.active_api_keys_named(tag, org.id):
            await repo.revoke_api_key(old.id, at)
        for old in await repo.active_api_keys_named(tag, None):
            await repo.revoke_api_key(old.id, at)
        host_id = None
        for old_token in await repo.active_host_tokens_named(tag):
            host_id = host_id or old_token.host_id
            await repo.revoke_host_token(old_token.id, at)
        key, key_secret = new_api_key(tag, "org", org.id, now)
        admin, admin_secret = new_api_key(tag, "admin", None, now)
        tok, tok_secret = new_host_token(tag, now, host_id=host_id)
        for k in (key, admin):
            await repo.add_api_key(k)
        await repo.add_host_token(tok)
    return Provisioned(org_id=org.id, api_key=key_secret.value, admin_key=admin_secret.value,
                       host_token=tok_secret.value, host_id=tok.host_id)
