"""Auth domain and use cases, over an in-memory repository."""
from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.auth.application.provision import provision
from services.auth.application.service import AuthService
from services.auth.domain import credentials
from services.auth.domain.errors import Conflict, Invalid, NotFound, Unauthorized
from services.auth.domain.model import authenticate, new_api_key, new_host_token, new_org

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class MemRepo:
    """The Repository port, in memory."""

    def __init__(self) -> None:
        self.orgs: dict = {}
        self.keys: dict = {}
        self.tokens: dict = {}

    async def add_org(self, org):
        if any(o.name == org.name for o in self.orgs.values()):
            raise Conflict("taken")
        self.orgs[org.id] = org

    async def get_org(self, org_id):
        return self.orgs.get(org_id)

    async def org_by_name(self, name):
        return next((o for o in self.orgs.values() if o.name == name), None)

    async def add_api_key(self, key):
        self.keys[key.id] = key

    async def api_keys_with_prefix(self, prefix):
        return [k for k in self.keys.values() if k.prefix == prefix]

    async def get_api_key(self, key_id):
        return self.keys.get(key_id)

    async def active_api_keys_named(self, name, org_id):
        return [k for k in self.keys.values()
                if k.name == name and k.org_id == org_id and k.active]

    async def revoke_api_key(self, key_id, at):
        if self.keys[key_id].active:
            self.keys[key_id] = replace(self.keys[key_id], revoked_at=at)

    async def add_host_token(self, tok):
        self.tokens[tok.id] = tok

    async def host_tokens_with_prefix(self, prefix):
        return [t for t in self.tokens.values() if t.prefix == prefix]

    async def active_host_tokens_named(self, name):
        return [t for t in self.tokens.values() if t.name == name and t.active]

    async def revoke_host_token(self, token_id, at):
        self.tokens[token_id] = replace(self.tokens[token_id], revoked_at=at)

    async def mark_registered(self, token_id, hostname, at):
        self.tokens[token_id] = replace(self.tokens[token_id], hostname=hostname,
                                        registered_at=at)


class MemUow:
    def __init__(self) -> None:
        self.repo = MemRepo()

    @asynccontextmanager
    async def tx(self):
        yield self.repo


class Notes:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    async def key_revoked(self, key_id: str) -> None:
        self.revoked.append(key_id)


@pytest.fixture
def svc() -> AuthService:
    return AuthService(MemUow(), Notes(), clock=lambda: NOW)


def test_minted_secret_shape_and_hash():
    s = credentials.mint(credentials.API_KEY)
    assert re.fullmatch(r"crl_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", s.value)
    assert s.value.startswith(s.prefix + "_")
    assert s.digest == credentials.digest(s.value) and len(s.digest) == 64
    assert s.value not in repr(s)
    assert credentials.matches(s.value, s.digest)
    assert not credentials.matches(s.value + "x", s.digest)
    h = credentials.mint(credentials.HOST_TOKEN)
    assert h.value.startswith("crh_")
    assert credentials.mint(credentials.API_KEY).value != s.value


def test_visible_prefix_rejects_wrong_kind_and_shape():
    s = credentials.mint(credentials.API_KEY)
    assert credentials.visible_prefix(s.value, credentials.API_KEY) == s.prefix
    assert credentials.visible_prefix(s.value, credentials.HOST_TOKEN) is None
    for bad in ("", "crl_", "crl_zzzzzzzz_" + "a" * 43, s.value + "a", " " + s.value):
        assert credentials.visible_prefix(bad, credentials.API_KEY) is None


def test_key_scope_rules():
    key, secret = new_api_key("ci", "org", "o1", NOW)
    assert key.scope == "org" and key.org_id == "o1" and key.active
    assert key.digest == secret.digest and secret.value not in repr(key.__dict__.values())
    admin, _ = new_api_key("root", "admin", None, NOW)
    assert admin.org_id is None
    with pytest.raises(Invalid):
        new_api_key("x", "org", None, NOW)
    with pytest.raises(Invalid):
        new_api_key("x", "admin", "o1", NOW)
    with pytest.raises(Invalid):
        new_api_key("x", "root", None, NOW)
    with pytest.raises(Invalid):
        new_org(" padded ", NOW)


def test_authenticate_picks_matching_active_record():
    a, sa = new_api_key("a", "admin", None, NOW)
    b, _ = new_api_key("b", "admin", None, NOW)
    b_same_prefix = replace(b, prefix=a.prefix)
    assert authenticate(sa.value, [b_same_prefix, a]) is a
    with pytest.raises(Unauthorized):
        authenticate(sa.value, [b_same_prefix])
    with pytest.raises(Unauthorized):
        authenticate(sa.value, [replace(a, revoked_at=NOW.isoformat())])
    with pytest.raises(Unauthorized):
        authenticate(sa.value, [])


def test_host_token_gets_server_assigned_id():
    t1, _ = new_host_token("h", NOW)
    t2, _ = new_host_token("h", NOW)
    assert t1.host_id != t2.host_id and "." not in t1.host_id
    t3, _ = new_host_token("h", NOW, host_id=t1.host_id)
    assert t3.host_id == t1.host_id and t3.id != t1.id


async def test_service_key_lifecycle(svc: AuthService):
    org = await svc.create_org("acme")
    issued = await svc.create_key("ci", "org", org.id)
    key = await svc.verify(issued.secret)
    assert (key.id, key.org_id, key.scope) == (issued.key.id, org.id, "org")
    with pytest.raises(Unauthorized):
        await svc.verify(issued.secret[:-1] + ("A" if issued.secret[-1] != "A" else "B"))
    revoked = await svc.revoke_key(key.id)
    assert not revoked.active and svc.notifier.revoked == [key.id]
    with pytest.raises(Unauthorized):
        await svc.verify(issued.secret)
    await svc.revoke_key(key.id)  # idempotent
    with pytest.raises(NotFound):
        await svc.revoke_key("nope")


async def test_service_refuses_unknown_org_and_duplicate_name(svc: AuthService):
    with pytest.raises(NotFound):
        await svc.create_key("ci", "org", "missing")
    await svc.create_org("acme")
    with pytest.raises(Conflict):
        await svc.create_org("acme")


async def test_host_token_cannot_verify_as_api_key(svc: AuthService):
    issued = await svc.create_host_token("h1")
    with pytest.raises(Unauthorized):
        await svc.verify(issued.secret)
    tok = await svc.register_host(issued.secret, "node-1")
    assert tok.host_id == issued.token.host_id
    with pytest.raises(Unauthorized):
        await svc.register_host(credentials.mint(credentials.HOST_TOKEN).value, "node-2")


async def test_provision_is_idempotent_for_the_org(svc: AuthService):
    first = await provision(svc, "dev")
    second = await provision(svc, "dev")
    assert first.org_id == second.org_id and first.host_id == second.host_id
    assert first.api_key != second.api_key
    assert (await svc.verify(second.api_key)).org_id == second.org_id
    assert (await svc.verify(second.admin_key)).scope == "admin"
    with pytest.raises(Unauthorized):  # rotated: old secret revoked
        await svc.verify(first.api_key)
    assert (await svc.register_host(second.host_token, "dev")).host_id == second.host_id
    with pytest.raises(Unauthorized):
        await svc.register_host(first.host_token, "dev")
