"""Snapshots of live sandboxes and forks from them."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.envelope import NAME_RE
from contracts.sandbox import NetworkSpec

from ..domain.snapshot import snapshot_view
from ..domain.view import sandbox_view
from .deps import Ctx, OpId, Org
from .problems import problem

snapshot_router = APIRouter(tags=["snapshots"])
Id = Annotated[str, Path(min_length=1, max_length=64)]


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=NAME_RE.pattern)
    # deleted this long after it is taken (default: the gateway's snapshot_ttl_s)
    ttl_seconds: int | None = Field(default=None, ge=60, le=365 * 86400)


class SnapshotOut(BaseModel):
    id: str
    name: str
    org_id: str
    sandbox_id: str
    state: str
    host_id: str | None
    created_at: str
    failure: dict[str, str] | None
    expires_at: str | None = None
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


@snapshot_router.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=202,
                      response_model=SnapshotOut,
                      responses={201: {"model": SnapshotOut, "description": "ready (?wait=true)"},
                                 502: {"description": "with ?wait=true: the snapshot failed"}})
async def take_snapshot(ctx: Ctx, oid: OpId, org: Org, sandbox_id: Id, body: SnapshotIn,
                        wait: bool = False,
                        timeout_s: Annotated[float, Query(gt=0, le=600)] = 120) -> Any:
    snap = await ctx.sandboxes.take_snapshot(sandbox_id, org.org_id, body.name, oid,
                                             body.ttl_seconds)
    if not wait:
        return JSONResponse(snapshot_view(snap), status_code=202)
    snap = await ctx.sandboxes.wait_snapshot(snap, org.org_id, timeout_s)
    if snap.state == "ready":
        return JSONResponse(snapshot_view(snap), status_code=201)
    if snap.state == "pending":  # the wait ended first: taken all the same, poll it
        return JSONResponse(snapshot_view(snap), status_code=202)
    return problem(502, f"snapshot is {snap.state}", oid, code="snapshot-" + snap.state,
                   snapshot_id=str(snap.id), failure=snap.failure)


@snapshot_router.get("/v1/snapshots", response_model=SnapshotPage)
async def list_snapshots(ctx: Ctx, org: Org,
                         limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         cursor: Annotated[str | None, Query(max_length=512)] = None) -> dict:
    items, nxt = await ctx.sandboxes.list_snapshots(org.org_id, limit, cursor)
    return {"items": items, "next_cursor": nxt}


@snapshot_router.get("/v1/snapshots/{snapshot_id}", response_model=SnapshotOut)
async def get_snapshot(ctx: Ctx, org: Org, snapshot_id: Id) -> dict:
    return snapshot_view(await ctx.sandboxes.snapshot(snapshot_id, org.org_id))


@snapshot_router.delete("/v1/snapshots/{snapshot_id}", status_code=202,
                        response_model=SnapshotOut)
async def delete_snapshot(ctx: Ctx, oid: OpId, org: Org, snapshot_id: Id) -> dict:
    return snapshot_view(await ctx.sandboxes.delete_snapshot(snapshot_id, org.org_id, oid))


class ForkOut(BaseModel):
    items: list[dict[str, Any]]


@snapshot_router.post("/v1/snapshots/{snapshot_id}/fork", status_code=202,
                      response_model=ForkOut,
                      responses={201: {"model": ForkOut}, 207: {"model": ForkOut}})
async def fork_snapshot(ctx: Ctx, oid: OpId, org: Org, snapshot_id: Id, body: ForkIn,
                        wait: bool = False,
                        timeout_s: Annotated[float, Query(gt=0, le=600)] = 120) -> Any:
    """N new sandboxes from one snapshot, each with its own identity."""
    try:
        spec = await ctx.sandboxes.fork_spec(snapshot_id, org.org_id, body.ttl_seconds,
                                             body.env, body.metadata, body.network)
    except ValidationError as e:  # same rules as a create body
        raise RequestValidationError(e.errors()) from None
    made = await ctx.sandboxes.fork(org.org_id, spec, body.count, oid)
    if not wait:
        return JSONResponse({"items": [sandbox_view(sb) for sb in made]}, status_code=202)
    done = await ctx.sandboxes.wait_started([str(sb.id) for sb in made], org.org_id, timeout_s)
    docs = [sandbox_view(sb) for sb in done]
    ok = all(d["state"] == "running" for d in docs)
    return JSONResponse({"items": docs}, status_code=201 if ok else 207)
