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


async def principal(request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> Principal:
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) > 300:
        raise Unauthorized()
    return await context(request).auth.verify(authorization[7:].strip(), op_id(request))


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


Org = Annotated[OrgCaller, Depends(OrgCaller)]
Admin = Annotated[Principal, Depends(admin_principal)]
