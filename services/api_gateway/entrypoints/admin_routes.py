"""Administration endpoints (admin key), answered by the auth service."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from contracts.rpc import ApiKeyCreated, HostRevokedResult, HostTokenCreated, Org, Revoked

from .deps import Admin, Ctx, OpId

admin_router = APIRouter(tags=["admin"])
HostId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class OrgIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class KeyIn(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=100)


class HostTokenIn(BaseModel):
    name: str = Field(default="host", min_length=1, max_length=100)


@admin_router.post("/v1/orgs", status_code=201, response_model=Org)
async def create_org(ctx: Ctx, oid: OpId, body: OrgIn, admin: Admin) -> Org:
    return await ctx.auth.create_org(admin.key, body.name, oid)


@admin_router.post("/v1/orgs/{org_id}/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(ctx: Ctx, oid: OpId, org_id: Annotated[str, Path(max_length=64)],
                     body: KeyIn, admin: Admin) -> ApiKeyCreated:
    return await ctx.auth.create_key(admin.key, org_id, body.name, oid)


@admin_router.delete("/v1/api-keys/{key_id}", response_model=Revoked)
async def revoke_key(ctx: Ctx, oid: OpId, key_id: Annotated[str, Path(max_length=64)],
                     admin: Admin) -> Revoked:
    return await ctx.auth.revoke_key(admin.key, key_id, oid)


@admin_router.post("/v1/hosts/tokens", status_code=201, response_model=HostTokenCreated)
async def create_host_token(ctx: Ctx, oid: OpId, body: HostTokenIn,
                            admin: Admin) -> HostTokenCreated:
    return await ctx.auth.create_host_token(admin.key, body.name, oid)


@admin_router.post("/v1/hosts/{host_id}/revoke", response_model=HostRevokedResult)
async def revoke_host(ctx: Ctx, oid: OpId, host_id: HostId, admin: Admin) -> HostRevokedResult:
    """Revoke the host's tokens: it can no longer connect to the bus, its live
    connections are cut, and the scheduler never places on it again; its
    sandboxes are reported lost."""
    return await ctx.auth.revoke_host(admin.key, host_id, oid)
