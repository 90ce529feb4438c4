"""Snapshots of live sandboxes and forks from them."""
from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.tracing import current_traceparent
from contracts.envelope import NAME_RE
from contracts.rpc import Principal
from contracts.sandbox import NetworkSpec, SandboxSpec

from ..application.errors import UseCaseError
from ..domain.snapshot import snapshot_view
from ..domain.view import sandbox_view
from .deps import op_id, org_principal
from .problems import problem

snapshot_router = APIRouter(tags=["snapshots"])
Id = Annotated[str, Path(min_length=1, max_length=64)]


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=NAME_RE.pattern)


class SnapshotOut(BaseModel):
    id: str
    name: str
    org_id: str
    sandbox_id: str
    state: str
    host_id: str | None
    created_at: str
    failure: dict[str, str] | None
    image: str | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    size_bytes: int | None = None


class SnapshotPage(BaseModel):
    items: list[SnapshotOut]
    next_cursor: str | None


class ForkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=1, ge=1, le=20)
    ttl_seconds: int = Field(default=900, ge=10, le=30 * 86400)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    network: NetworkSpec = Field(default_factory=NetworkSpec)


async def _wait_snapshot(ctx, snap_id: str, org_id: str, timeout_s: float):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while True:
        snap = await asyncio.to_thread(ctx.ledger.find_snapshot, snap_id, org_id)
        if snap.state != "pending" or time.monotonic() > deadline:
            return snap
        await ctx.waiters.wait(snap.sandbox_id, min(0.5, max(deadline - time.monotonic(), 0.01)))


@snapshot_router.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=202,
                      response_model=SnapshotOut,
                      responses={201: {"model": SnapshotOut, "description": "ready (?wait=true)"},
                                 502: {"description": "with ?wait=true: the snapshot failed"}})
async def take_snapshot(request: Request, sandbox_id: Id, body: SnapshotIn,
                        p: Annotated[Principal, Depends(org_principal)],
                        wait: bool = False,
                        timeout_s: Annotated[float, Query(gt=0, le=600)] = 120) -> Any:
    ctx = request.app.state.ctx
    snap = await asyncio.to_thread(ctx.ledger.request_snapshot, sandbox_id, p.org_id, body.name,
                                   op_id(request), current_traceparent())
    if not wait:
        return JSONResponse(snapshot_view(snap), status_code=202)
    snap = await _wait_snapshot(ctx, str(snap.id), p.org_id, timeout_s)
    if snap.state == "ready":
        return JSONResponse(snapshot_view(snap), status_code=201)
    if snap.state == "pending":  # the wait ended first: taken all the same, poll it
        return JSONResponse(snapshot_view(snap), status_code=202)
    return problem(502, f"snapshot is {snap.state}", op_id(request),
                   code="snapshot-" + snap.state, snapshot_id=str(snap.id), failure=snap.failure)


@snapshot_router.get("/v1/snapshots", response_model=SnapshotPage)
async def list_snapshots(request: Request, p: Annotated[Principal, Depends(org_principal)],
                         limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         cursor: Annotated[str | None, Query(max_length=512)] = None) -> dict:
    try:
        items, nxt = await request.app.state.ctx.read_model.list_snapshots(p.org_id, limit, cursor)
    except ValueError as e:
        raise UseCaseError(str(e)) from None
    return {"items": items, "next_cursor": nxt}


@snapshot_router.get("/v1/snapshots/{snapshot_id}", response_model=SnapshotOut)
async def get_snapshot(request: Request, snapshot_id: Id,
                       p: Annotated[Principal, Depends(org_principal)]) -> dict:
    snap = await asyncio.to_thread(request.app.state.ctx.ledger.find_snapshot, snapshot_id,
                                   p.org_id)
    return snapshot_view(snap)


@snapshot_router.delete("/v1/snapshots/{snapshot_id}", status_code=202,
                        response_model=SnapshotOut)
async def delete_snapshot(request: Request, snapshot_id: Id,
                          p: Annotated[Principal, Depends(org_principal)]) -> dict:
    snap = await asyncio.to_thread(request.app.state.ctx.ledger.request_snapshot_delete,
                                   snapshot_id, p.org_id, op_id(request), current_traceparent())
    return snapshot_view(snap)


class ForkOut(BaseModel):
    items: list[dict[str, Any]]


@snapshot_router.post("/v1/snapshots/{snapshot_id}/fork", status_code=202,
                      response_model=ForkOut,
                      responses={201: {"model": ForkOut}, 207: {"model": ForkOut}})
async def fork_snapshot(request: Request, snapshot_id: Id, body: ForkIn,
                        p: Annotated[Principal, Depends(org_principal)],
                        wait: bool = False,
                        timeout_s: Annotated[float, Query(gt=0, le=600)] = 120) -> Any:
    """N new sandboxes from one snapshot, each with its own identity."""
    ctx = request.app.state.ctx
    snap = await asyncio.to_thread(ctx.ledger.find_snapshot, snapshot_id, p.org_id)
    shape = snap.shape or {}
    try:
        spec = SandboxSpec(image=shape.get("image", "default"), vcpus=shape.get("vcpus", 1),
                           memory_mib=shape.get("memory_mib", 256), ttl_seconds=body.ttl_seconds,
                           env=body.env, metadata=body.metadata, network=body.network,
                           snapshot_id=snapshot_id)
    except ValidationError as e:  # same rules as a create body
        raise RequestValidationError(e.errors()) from None
    made = []
    for _ in range(body.count):
        sb, _ = await asyncio.to_thread(ctx.ledger.request, p.org_id, spec, op_id(request),
                                        current_traceparent(), None, ctx.limits)
        made.append(str(sb.id))
    if not wait:
        docs = [sandbox_view(await asyncio.to_thread(ctx.ledger.find, i, p.org_id)) for i in made]
        return JSONResponse({"items": docs}, status_code=202)
    deadline = time.monotonic() + timeout_s
    docs = []
    for sid in made:
        while True:
            sb = await asyncio.to_thread(ctx.ledger.find, sid, p.org_id)
            if sb.state not in ("requested", "scheduled", "starting") or time.monotonic() > deadline:
                break
            await ctx.waiters.wait(sid, 0.5)
        docs.append(sandbox_view(sb))
    ok = all(d["state"] == "running" for d in docs)
    return JSONResponse({"items": docs}, status_code=201 if ok else 207)
