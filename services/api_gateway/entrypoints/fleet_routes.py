"""Fleet administration (admin key): thin proxies to the scheduler's fleet RPCs.

Cordon and drain keep new sandboxes off a host; the sandboxes already on it
keep running and leave as they end (no live migration or evacuation).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from common.rpc import request as rpc
from contracts import subjects
from contracts.rpc import HostAction, HostActionResult, HostList, ListHosts, Principal

from .deps import admin_principal, op_id

fleet_router = APIRouter(tags=["admin"])
HostId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
TIMEOUT_S = 5.0
MAX_LIST_REPLY = 4 << 20  # a large fleet's listing


@fleet_router.get("/v1/hosts", response_model=HostList)
async def list_hosts(request: Request,
                     _: Annotated[Principal, Depends(admin_principal)]) -> HostList:
    """Every host the scheduler has recorded, with capacity, use and liveness."""
    return await rpc(request.app.state.ctx.bus.nc, subjects.RPC_SCHEDULER_HOSTS_LIST,
                     ListHosts(op_id=op_id(request)), HostList, timeout=TIMEOUT_S,
                     max_bytes=MAX_LIST_REPLY)


async def _act(request: Request, subject: str, host_id: str) -> HostActionResult:
    return await rpc(request.app.state.ctx.bus.nc, subject,
                     HostAction(host_id=host_id, op_id=op_id(request)), HostActionResult,
                     timeout=TIMEOUT_S, max_bytes=MAX_LIST_REPLY)


@fleet_router.post("/v1/hosts/{host_id}/cordon", response_model=HostActionResult)
async def cordon_host(request: Request, host_id: HostId,
                      _: Annotated[Principal, Depends(admin_principal)]) -> HostActionResult:
    """No new placements on the host; running sandboxes are untouched. Idempotent."""
    return await _act(request, subjects.RPC_SCHEDULER_HOSTS_CORDON, host_id)


@fleet_router.post("/v1/hosts/{host_id}/uncordon", response_model=HostActionResult)
async def uncordon_host(request: Request, host_id: HostId,
                        _: Annotated[Principal, Depends(admin_principal)]) -> HostActionResult:
    """Open a cordoned or draining host for placements again. Idempotent."""
    return await _act(request, subjects.RPC_SCHEDULER_HOSTS_UNCORDON, host_id)


@fleet_router.post("/v1/hosts/{host_id}/drain", response_model=HostActionResult)
async def drain_host(request: Request, host_id: HostId,
                     _: Annotated[Principal, Depends(admin_principal)]) -> HostActionResult:
    """Cordon and list the sandboxes still on the host (`remaining`): they leave as they
    are stopped, destroyed or expire. Live migration / evacuation is not supported."""
    return await _act(request, subjects.RPC_SCHEDULER_HOSTS_DRAIN, host_id)
