"""Request dependencies: op id and the caller's principal."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from contracts.rpc import Principal

from ..adapters.auth_client import Unauthorized


class Forbidden(Exception):
    pass


def op_id(request: Request) -> str:
    return request.scope["state"]["op_id"]


async def principal(request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> Principal:
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) > 300:
        raise Unauthorized()
    return await request.app.state.ctx.auth.verify(authorization[7:].strip(), op_id(request))


async def org_principal(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.scope != "org" or not p.org_id:
        raise Forbidden("this endpoint needs an org API key")
    return p


async def admin_principal(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.scope != "admin":
        raise Forbidden("this endpoint needs an admin key")
    return p
