"""Request dependencies: the wired context, the op id and the caller's principal."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from contracts.rpc import Principal

from ..adapters.auth_client import Unauthorized
from ..bootstrap import GatewayContext


class Forbidden(Exception):
    pass


def context(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.ctx
    return ctx


def op_id(request: Request) -> str:
    oid: str = request.scope["state"]["op_id"]
    return oid


Ctx = Annotated[GatewayContext, Depends(context)]
OpId = Annotated[str, Depends(op_id)]


def bearer_key(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) > 300:
        raise Unauthorized()
    return authorization[7:].strip()


async def principal(request: Request, key: Annotated[str, Depends(bearer_key)]) -> Principal:
    return await context(request).auth.verify(key, op_id(request))


async def org_principal(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.scope != "org" or not p.org_id:
        raise Forbidden("this endpoint needs an org API key")
    return p


async def admin_principal(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.scope != "admin":
        raise Forbidden("this endpoint needs an admin key")
    return p


class OrgCaller:
    """An org key's principal, with the org id known to be set."""

    def __init__(self, p: Annotated[Principal, Depends(org_principal)]) -> None:
        assert p.org_id is not None
        self.org_id: str = p.org_id
        self.principal = p


class AdminCaller:
    """An admin key's principal, and the key itself: the auth service checks it
    again on every administration call."""

    def __init__(self, p: Annotated[Principal, Depends(admin_principal)],
                 key: Annotated[str, Depends(bearer_key)]) -> None:
        self.principal, self.key = p, key


Org = Annotated[OrgCaller, Depends(OrgCaller)]
Admin = Annotated[AdminCaller, Depends(AdminCaller)]
