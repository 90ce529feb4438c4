"""Request/reply endpoints on FastStream's NatsBroker (queue group `auth`).

Each handler takes the raw message so that bad input gets an `RpcError`
reply instead of a silent timeout. Request bodies are never logged: they
carry secrets.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream.nats import NatsBroker, NatsMessage

from common.rpc import Reply, answer
from contracts import rpc
from contracts import subjects as s

from ..application.service import AuthService
from ..domain.errors import AuthError

log = logging.getLogger("corral.auth.rpc")
Req = TypeVar("Req", bound=rpc.RpcModel)


def register(broker: NatsBroker, svc: AuthService, queue: str = "auth",
             max_request_bytes: int = 16384) -> None:
    def endpoint(subject: str, req_type: type[Req],
                 call: Callable[[Req], Awaitable[rpc.RpcModel]]) -> None:
        async def handler(msg: NatsMessage) -> rpc.RpcModel | Reply:
            return await answer(msg.body, req_type, call, max_request_bytes, _refuse)
        handler.__name__ = f"rpc_{subject.rsplit('.', 2)[-2]}_{subject.rsplit('.', 1)[-1]}"
        broker.subscriber(subject, queue=queue)(handler)

    async def verify(r: rpc.VerifyKey) -> rpc.Principal:
        key = await svc.verify(r.key)
        return rpc.Principal(key_id=key.id, org_id=key.org_id, scope=key.scope)

    async def create_org(r: rpc.CreateOrg) -> rpc.Org:
        await svc.require_admin(r.actor_key)
        org = await svc.create_org(r.name)
        return rpc.Org(id=org.id, name=org.name, created_at=org.created_at)

    async def create_key(r: rpc.CreateApiKey) -> rpc.ApiKeyCreated:
        await svc.require_admin(r.actor_key)
        issued = await svc.create_key(r.name, r.scope, r.org_id)
        k = issued.key
        return rpc.ApiKeyCreated(id=k.id, prefix=k.prefix, key=issued.secret, org_id=k.org_id,
                                 scope=k.scope)

    async def revoke_key(r: rpc.RevokeApiKey) -> rpc.Revoked:
        await svc.require_admin(r.actor_key)
        key = await svc.revoke_key(r.id)
        return rpc.Revoked(id=key.id, revoked=not key.active)

    async def create_host_token(r: rpc.CreateHostToken) -> rpc.HostTokenCreated:
        await svc.require_admin(r.actor_key)
        issued = await svc.create_host_token(r.name)
        return rpc.HostTokenCreated(host_id=issued.token.host_id, token=issued.secret)

    async def revoke_host(r: rpc.RevokeHost) -> rpc.HostRevokedResult:
        await svc.require_admin(r.actor_key)
        tokens, cut = await svc.revoke_host(r.host_id, r.op_id)
        return rpc.HostRevokedResult(host_id=r.host_id, revoked_tokens=tokens, disconnected=cut)

    async def register_host(r: rpc.RegisterHost) -> rpc.HostIdentity:
        tok = await svc.register_host(r.token, r.hostname)
        return rpc.HostIdentity(host_id=tok.host_id)

    endpoint(s.RPC_AUTH_VERIFY, rpc.VerifyKey, verify)
    endpoint(s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg, create_org)
    endpoint(s.RPC_AUTH_CREATE_KEY, rpc.CreateApiKey, create_key)
    endpoint(s.RPC_AUTH_REVOKE_KEY, rpc.RevokeApiKey, revoke_key)
    endpoint(s.RPC_AUTH_CREATE_HOST_TOKEN, rpc.CreateHostToken, create_host_token)
    endpoint(s.RPC_AUTH_REVOKE_HOST, rpc.RevokeHost, revoke_host)
    endpoint(s.RPC_AUTH_REGISTER_HOST, rpc.RegisterHost, register_host)


def _refuse(e: Exception) -> rpc.RpcError | None:
    return rpc.RpcError(error=e.code, detail=e.detail) if isinstance(e, AuthError) else None
