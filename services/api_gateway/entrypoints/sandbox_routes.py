"""Sandboxes: create, list, read, lifecycle intents, TTL and history."""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from common.logging import log_context
from contracts.sandbox import STATES, SandboxSpec

from ..application.sandboxes import Intent
from ..domain.sandbox import Sandbox
from ..domain.view import sandbox_view
from .deps import Ctx, OpId, Org
from .problems import problem

# On a create once the org used 80% of its monthly vCPU-seconds cap.
SPEND_WARNING = "Corral-Spend-Warning"

log = logging.getLogger("corral.gateway")
sandbox_router = APIRouter(tags=["sandboxes"])
SandboxId = Annotated[str, Path(min_length=1, max_length=64)]
IdempotencyKey = Annotated[str | None, Header(max_length=128, pattern=r"^[\x21-\x7e]+$")]


class SandboxOut(BaseModel):
    id: str
    name: str | None
    org_id: str
    image: str
    vcpus: int
    memory_mib: int
    state: Literal[STATES]  # type: ignore[valid-type]
    host_id: str | None
    created_at: str
    started_at: str | None
    expires_at: str | None
    ended_at: str | None
    failure: dict[str, str] | None
    metadata: dict[str, str]


class TtlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: int = Field(ge=10, le=30 * 86400)


class SandboxPage(BaseModel):
    items: list[SandboxOut]
    next_cursor: str | None


class EventPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


@sandbox_router.post("/v1/sandboxes", status_code=202,
                     responses={201: {"model": SandboxOut, "description": "running (?wait=true)"},
                                202: {"model": SandboxOut, "description":
                                      "accepted; with ?wait=true: still starting when the "
                                      "wait ended"},
                                402: {"description": "the org's monthly vCPU-seconds cap is "
                                      "reached (problem+json)"},
                                502: {"description":
                                      "with ?wait=true: the sandbox failed to start"}})
async def create_sandbox(ctx: Ctx, oid: OpId, org: Org, spec: SandboxSpec | None = None,
                         wait: bool = False,
                         timeout_s: Annotated[float | None, Query(gt=0, le=600)] = None,
                         idempotency_key: IdempotencyKey = None) -> JSONResponse:
    sb, created, warning = await ctx.sandboxes.create(org.org_id, spec or SandboxSpec(), oid,
                                                      idempotency_key)
    with log_context(sandbox_id=str(sb.id)):
        log.info("sandbox requested" if created else "idempotent replay of create",
                 extra={"stage": "accepted"} if created else {})
    out = await _created(ctx, oid, org.org_id, sb, created, wait, timeout_s)
    if warning:
        out.headers[SPEND_WARNING] = warning
    return out


async def _created(ctx: Ctx, oid: str, org_id: str, sb: Sandbox, created: bool, wait: bool,
                   timeout_s: float | None) -> JSONResponse:
    if not wait:
        return JSONResponse(sandbox_view(sb), status_code=202)
    if not created and sb.started_at:  # a replay: the original result was 201
        return JSONResponse(sandbox_view(sb), status_code=201)
    sb = await ctx.sandboxes.wait_running(str(sb.id), org_id,
                                          timeout_s or ctx.settings.wait_timeout_s)
    if sb.state == "running":
        return JSONResponse(sandbox_view(sb), status_code=201)
    if sb.live:  # created all the same: the caller polls from here
        return JSONResponse(sandbox_view(sb), status_code=202)
    return problem(502, f"sandbox did not start: it is {sb.state}", oid,
                   code="sandbox-failed", sandbox_id=str(sb.id), failure=sb.failure,
                   state=sb.state)


@sandbox_router.get("/v1/sandboxes", response_model=SandboxPage)
async def list_sandboxes(
    ctx: Ctx, org: Org,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    state: Literal[STATES] | None = None,  # type: ignore[valid-type]
    name: Annotated[str | None, Query(max_length=63)] = None,
) -> dict:
    items, nxt = await ctx.sandboxes.list_sandboxes(org.org_id, limit, cursor, state, name)
    return {"items": items, "next_cursor": nxt}


@sandbox_router.get("/v1/sandboxes/{sandbox_id}", response_model=SandboxOut)
async def get_sandbox(ctx: Ctx, org: Org, sandbox_id: SandboxId) -> dict:
    return sandbox_view(await ctx.sandboxes.find(sandbox_id, org.org_id))


@sandbox_router.delete("/v1/sandboxes/{sandbox_id}", status_code=202,
                       response_model=SandboxOut)
async def delete_sandbox(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId) -> dict:
    return sandbox_view(await ctx.sandboxes.destroy(sandbox_id, org.org_id, oid))


def _intent_route(verb: Intent) -> None:
    async def route(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId) -> dict:
        return sandbox_view(await ctx.sandboxes.intent(verb, sandbox_id, org.org_id, oid))
    sandbox_router.post(f"/v1/sandboxes/{{sandbox_id}}/{verb}", status_code=202,
                        response_model=SandboxOut, name=f"{verb}_sandbox")(route)


for _verb in get_args(Intent):
    _intent_route(_verb)


@sandbox_router.post("/v1/sandboxes/{sandbox_id}/ttl", response_model=SandboxOut)
async def extend_ttl(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                     body: TtlIn) -> dict:
    return sandbox_view(await ctx.sandboxes.extend_ttl(
        sandbox_id, org.org_id, body.ttl_seconds, oid, datetime.now(UTC)))


@sandbox_router.get("/v1/sandboxes/{sandbox_id}/events", response_model=EventPage)
async def sandbox_events(
    ctx: Ctx, org: Org, sandbox_id: SandboxId,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
) -> dict:
    items, nxt = await ctx.sandboxes.events(sandbox_id, org.org_id, int(cursor or 0), limit)
    return {"items": items, "next_cursor": nxt}
