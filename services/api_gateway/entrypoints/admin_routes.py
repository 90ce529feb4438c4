"""Administration endpoints (admin key): thin proxies to the auth service."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from common.rpc import request as rpc
from contracts import subjects
from contracts.rpc import (ApiKeyCreated, CreateApiKey, CreateHostToken, CreateOrg,
                           HostTokenCreated, Org, Principal, Revoked, RevokeApiKey)

from .deps import admin_principal, op_id

admin_router = APIRouter(tags=["admin"])


class OrgIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class KeyIn(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=100)


class HostTokenIn(BaseModel):
    name: str = Field(default="host", min_length=1, max_length=100)


@admin_router.post("/v1/orgs", status_code=201, response_model=Org)
async def create_org(request: Request, body: OrgIn,
                     _: Annotated[Principal, Depends(admin_principal)]) -> Org:
    return await rpc(request.app.state.ctx.bus.nc, subjects.RPC_AUTH_CREATE_ORG,
                     CreateOrg(name=body.name, op_id=op_id(request)), Org)


@admin_router.post("/v1/orgs/{org_id}/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(request: Request, org_id: Annotated[str, Path(max_length=64)], body: KeyIn,
                     _: Annotated[Principal, Depends(admin_principal)]) -> ApiKeyCreated:
    return await rpc(request.app.state.ctx.bus.nc, subjects.RPC_AUTH_CREATE_KEY,
                     CreateApiKey(org_id=org_id, name=body.name, op_id=op_id(request)),
                     ApiKeyCreated)


@admin_router.delete("/v1/api-keys/{key_id}", response_model=Revoked)
async def revoke_key(request: Request, key_id: Annotated[str, Path(max_length=64)],
                     _: Annotated[Principal, Depends(admin_principal)]) -> Revoked:
    return await rpc(request.app.state.ctx.bus.nc, subjects.RPC_AUTH_REVOKE_KEY,
                     RevokeApiKey(id=key_id, op_id=op_id(request)), Revoked)


@admin_router.post("/v1/hosts/tokens", status_code=201, response_model=HostTokenCreated)
async def create_host_token(request: Request, body: HostTokenIn,
                            _: Annotated[Principal, Depends(admin_principal)]) -> HostTokenCreated:
    return await rpc(request.app.state.ctx.bus.nc, subjects.RPC_AUTH_CREATE_HOST_TOKEN,
                     CreateHostToken(name=body.name, op_id=op_id(request)), HostTokenCreated)
