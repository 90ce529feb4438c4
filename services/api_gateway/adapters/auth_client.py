"""The auth service over request/reply: API key verification, cached briefly,
and the administration calls (orgs, keys, host tokens).

A revocation broadcast drops the cache at once; otherwise entries expire
after `ttl_s`, so revocation takes effect within seconds everywhere.
"""
from __future__ import annotations

import hashlib
import time

from nats.aio.client import Client
from nats.aio.msg import Msg

from common.rpc import RpcClient, RpcFailure
from contracts import subjects
from contracts.rpc import (ApiKeyCreated, CreateApiKey, CreateHostToken, CreateOrg,
                           HostRevokedResult, HostTokenCreated, Org, Principal, Revoked,
                           RevokeApiKey, RevokeHost, VerifyKey)


class Unauthorized(Exception):
    pass


class AuthClient(RpcClient):
    def __init__(self, nc: Client, ttl_s: float = 5.0, timeout_s: float = 3.0):
        super().__init__(nc, timeout_s)
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def start(self) -> None:
        async def _revoked(_msg: Msg) -> None:
            self._cache.clear()
        await self.nc.subscribe(subjects.AUTH_REVOKED, cb=_revoked)

    async def verify(self, key: str, op_id: str) -> Principal:
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        try:
            principal = await self.call(subjects.RPC_AUTH_VERIFY,
                                        VerifyKey(key=key, op_id=op_id), Principal)
        except RpcFailure as e:
            if e.code == "unauthorized":
                self._cache.pop(digest, None)
                raise Unauthorized() from None
            raise
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl_s, principal)
        return principal

    # Administration: `actor` is the caller's admin key, checked again by auth.
    async def create_org(self, actor: str, name: str, op_id: str) -> Org:
        return await self.call(subjects.RPC_AUTH_CREATE_ORG,
                               CreateOrg(actor_key=actor, name=name, op_id=op_id), Org,
                               timeout=2.0)

    async def create_key(self, actor: str, org_id: str, name: str,
                         op_id: str) -> ApiKeyCreated:
        return await self.call(subjects.RPC_AUTH_CREATE_KEY,
                               CreateApiKey(actor_key=actor, org_id=org_id, name=name,
                                            op_id=op_id), ApiKeyCreated, timeout=2.0)

    async def revoke_key(self, actor: str, key_id: str, op_id: str) -> Revoked:
        return await self.call(subjects.RPC_AUTH_REVOKE_KEY,
                               RevokeApiKey(actor_key=actor, id=key_id, op_id=op_id), Revoked,
                               timeout=2.0)

    async def create_host_token(self, actor: str, name: str, op_id: str) -> HostTokenCreated:
        return await self.call(subjects.RPC_AUTH_CREATE_HOST_TOKEN,
                               CreateHostToken(actor_key=actor, name=name, op_id=op_id),
                               HostTokenCreated, timeout=2.0)

    async def revoke_host(self, actor: str, host_id: str, op_id: str) -> HostRevokedResult:
        return await self.call(subjects.RPC_AUTH_REVOKE_HOST,
                               RevokeHost(actor_key=actor, host_id=host_id, op_id=op_id),
                               HostRevokedResult, timeout=10.0)
