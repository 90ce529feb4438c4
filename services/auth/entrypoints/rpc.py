"""Request/reply endpoints on FastStream's NatsBroker (queue group `auth`).

Each handler takes the raw message so that bad input gets an `RpcError`
reply instead of a silent timeout. Request bodies are never logged: they
carry secrets.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, TypeVar

from faststream.nats import NatsBroker, NatsMessage
from pydantic import ValidationError

from common.logging import log_context
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
        async def handler(msg: NatsMessage):  # noqa: ANN202 - any RpcModel
            return await _serve(msg.body, req_type, call, max_request_bytes)
        handler.__name__ = f"rpc_{subject.rsplit('.', 2)[-2]}_{subject.rsplit('.', 1)[-1]}"
        broker.subscriber(subject, queue=queue)(handler)

    async def verify(r: rpc.VerifyKey) -> rpc.Principal:
        key = await svc.verify(r.key)
        return rpc.Principal(key_id=key.id, org_id=key.org_id,
                             scope=key.scope)  # type: ignore[arg-type]

    async def create_org(r: rpc.CreateOrg) -> rpc.Org:
        org = await svc.create_org(r.name)
        return rpc.Org(id=org.id, name=org.name, created_at=org.created_at)

    async def create_key(r: rpc.CreateApiKey) -> rpc.ApiKeyCreated:
        issued = await svc.create_key(r.name, r.scope, r.org_id)
        k = issued.key
        return rpc.ApiKeyCreated(id=k.id, prefix=k.prefix, key=issued.secret, org_id=k.org_id,
                                 scope=k.scope)  # type: ignore[arg-type]

    async def revoke_key(r: rpc.RevokeApiKey) -> rpc.Revoked:
        key = await svc.revoke_key(r.id)
        return rpc.Revoked(id=key.id, revoked=not key.active)

    async def create_host_token(r: rpc.CreateHostToken) -> rpc.HostTokenCreated:
        issued = await svc.create_host_token(r.name)
        return rpc.HostTokenCreated(host_id=issued.token.host_id, token=issued.secret)

    async def register_host(r: rpc.RegisterHost) -> rpc.HostIdentity:
        tok = await svc.register_host(r.token, r.hostname)
        return rpc.HostIdentity(host_id=tok.host_id)

    endpoint(s.RPC_AUTH_VERIFY, rpc.VerifyKey, verify)
    endpoint(s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg, create_org)
    endpoint(s.RPC_AUTH_CREATE_KEY, rpc.CreateApiKey, create_key)
    endpoint(s.RPC_AUTH_REVOKE_KEY, rpc.RevokeApiKey, revoke_key)
    endpoint(s.RPC_AUTH_CREATE_HOST_TOKEN, rpc.CreateHostToken, create_host_token)
    endpoint(s.RPC_AUTH_REGISTER_HOST, rpc.RegisterHost, register_host)


async def _serve(body: bytes, req_type: type[Req], call: Callable[[Req], Awaitable[rpc.RpcModel]],
                 max_bytes: int) -> rpc.RpcModel:
    if len(body) > max_bytes:
        return rpc.RpcError(error="invalid", detail="request too large")
    try:
        req = req_type.model_validate_json(body)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) or "body" for err in e.errors()[:8])
        return rpc.RpcError(error="invalid", detail=f"invalid {req_type.__name__}: {fields}")
    with log_context(op_id=getattr(req, "op_id", None)):
        try:
            return await call(req)
        except AuthError as e:
            return rpc.RpcError(error=e.code, detail=e.detail)
        except Exception:  # noqa: BLE001 - never leak internals to the caller
            log.exception("%s failed", req_type.__name__)
            return rpc.RpcError(error="internal", detail="internal error")
