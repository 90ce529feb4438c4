"""Fleet administration (admin key), answered by the scheduler.

Cordon and drain keep new sandboxes off a host; the sandboxes already on it
keep running and leave as they end (no live migration or evacuation).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from contracts.rpc import HostActionResult, HostList

from .deps import Admin, Ctx, OpId

fleet_router = APIRouter(tags=["admin"])
HostId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@fleet_router.get("/v1/hosts", response_model=HostList)
async def list_hosts(ctx: Ctx, oid: OpId, _: Admin) -> HostList:
    """Every host the scheduler has recorded, with capacity, use and liveness."""
    return await ctx.fleet.list_hosts(oid)


@fleet_router.post("/v1/hosts/{host_id}/cordon", response_model=HostActionResult)
async def cordon_host(ctx: Ctx, oid: OpId, host_id: HostId, _: Admin) -> HostActionResult:
    """No new placements on the host; running sandboxes are untouched. Idempotent."""
    return await ctx.fleet.act("cordon", host_id, oid)


@fleet_router.post("/v1/hosts/{host_id}/uncordon", response_model=HostActionResult)
async def uncordon_host(ctx: Ctx, oid: OpId, host_id: HostId, _: Admin) -> HostActionResult:
    """Open a cordoned or draining host for placements again. Idempotent."""
    return await ctx.fleet.act("uncordon", host_id, oid)


@fleet_router.post("/v1/hosts/{host_id}/drain", response_model=HostActionResult)
async def drain_host(ctx: Ctx, oid: OpId, host_id: HostId, _: Admin) -> HostActionResult:
    """Cordon and list the sandboxes still on the host (`remaining`): they leave as they
    are stopped, destroyed or expire. Live migration / evacuation is not supported."""
    return await ctx.fleet.act("drain", host_id, oid)
