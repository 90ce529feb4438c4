"""E2B's REST API (sandboxes: create, list, get, kill, timeout, pause,
connect), translated onto Corral's use cases, so that the unmodified `e2b`
SDK runs against Corral with E2B_API_URL=<gateway>/e2b and E2B_API_KEY=<a
Corral API key>. Mounted at /e2b; errors are problem+json with E2B's
`code` and `message` members."""
from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.rpc import Principal
from contracts.sandbox import NetworkSpec, SandboxSpec

from ..adapters.auth_client import Unauthorized
from ..application.errors import Conflict, NotFound, UseCaseError
from ..domain.sandbox import Sandbox
from ..domain.view import sandbox_view
from .deps import Ctx, Forbidden, OpId, context, op_id
from .sandbox_routes import IdempotencyKey

e2b_router = APIRouter(tags=["e2b"])
SandboxId = Annotated[str, Path(min_length=1, max_length=64)]
# What the E2B SDK may assume of envd (/e2b/envd): from 0.4.0 it sends no user unless
# asked, from 0.5.2 it may close stdin; uploads stay multipart (0.5.7 would switch).
ENVD_VERSION = "0.5.2"
DEFAULT_TIMEOUT_S = 300  # E2B's default lifetime
WAIT_S = 120


class BadRequest(UseCaseError):
    status, code = 400, "bad_request"


async def e2b_org(request: Request,
                  x_api_key: Annotated[str | None, Header(max_length=300)] = None) -> str:
    """E2B authenticates with `X-API-KEY`: here, a Corral org API key."""
    if not x_api_key:
        raise Unauthorized()
    p: Principal = await context(request).auth.verify(x_api_key.strip(), op_id(request))
    if p.scope != "org" or not p.org_id:
        raise Forbidden("this endpoint needs an org API key")
    return p.org_id


OrgId = Annotated[str, Depends(e2b_org)]


class NewSandbox(BaseModel):
    model_config = ConfigDict(extra="ignore")  # E2B options Corral does not have
    templateID: str = Field(min_length=1, max_length=128)
    timeout: int = Field(default=DEFAULT_TIMEOUT_S, ge=10, le=30 * 86400)
    metadata: dict[str, str] | None = None
    envVars: dict[str, str] | None = None
    allow_internet_access: bool | None = None


class TimeoutIn(BaseModel):
    timeout: int = Field(ge=1, le=30 * 86400)


class ConnectIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int = Field(default=DEFAULT_TIMEOUT_S, ge=10, le=30 * 86400)


def image_of(template_id: str) -> str:
    """E2B's `base` template is Corral's default image; any other template id
    names one of the org's images."""
    return "default" if template_id in ("base", "default") else template_id


def _template(sb: Sandbox) -> str:
    image = str(sb.spec.get("image", "default"))
    return "base" if image == "default" else image


def created(ctx: Ctx, sb: Sandbox) -> dict[str, Any]:
    """With the access token the SDK then sends to envd (/e2b/envd)."""
    return {"templateID": _template(sb), "sandboxID": str(sb.id), "clientID": "corral",
            "envdVersion": ENVD_VERSION, "alias": _template(sb), "domain": None,
            "envdAccessToken": ctx.sandboxes.access_token(sb.org_id, str(sb.id))}


def _state(state: str) -> str | None:
    """E2B knows running and paused; a starting sandbox counts as running,
    one that ended does not exist any more."""
    if state == "paused":
        return "paused"
    if state in ("requested", "scheduled", "starting", "running", "pausing", "resuming"):
        return "running"
    return None


def detail(view: dict[str, Any]) -> dict[str, Any]:
    """A sandbox as E2B lists and describes it (from Corral's sandbox view)."""
    image = view.get("image") or "default"
    template = "base" if image == "default" else image
    return {"templateID": template, "alias": template, "sandboxID": view["id"],
            "clientID": "corral", "startedAt": view.get("started_at") or view["created_at"],
            "endAt": view.get("expires_at") or view.get("ended_at") or view["created_at"],
            "envdVersion": ENVD_VERSION, "cpuCount": view["vcpus"],
            "memoryMB": view["memory_mib"], "diskSizeMB": 0,
            "state": _state(view["state"]), "metadata": view.get("metadata") or {}}


async def _live(ctx: Ctx, sandbox_id: str, org_id: str) -> Sandbox:
    sb = await ctx.sandboxes.find(sandbox_id, org_id)
    if _state(sb.state) is None:
        raise NotFound(f"sandbox {sandbox_id} is {sb.state}")
    return sb


async def _ttl(ctx: Ctx, sandbox_id: str, org_id: str, seconds: int, oid: str) -> Sandbox:
    return await ctx.sandboxes.extend_ttl(sandbox_id, org_id, max(seconds, 10), oid,
                                          datetime.now(UTC))


@e2b_router.post("/sandboxes", status_code=201)
@e2b_router.post("/v2/sandboxes", status_code=201)
async def create(ctx: Ctx, oid: OpId, org_id: OrgId, body: NewSandbox,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Waits until the sandbox runs, as E2B's create does."""
    try:
        spec = SandboxSpec(image=image_of(body.templateID), ttl_seconds=body.timeout,
                           env=body.envVars or {}, metadata=body.metadata or {},
                           network=NetworkSpec(egress=bool(body.allow_internet_access)))
    except ValidationError as e:
        raise BadRequest("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                   for x in e.errors()[:5]) or "invalid sandbox") from None
    sb, _, _ = await ctx.sandboxes.create(org_id, spec, oid, idempotency_key)
    sb = await ctx.sandboxes.wait_running(str(sb.id), org_id, WAIT_S)
    if sb.state != "running":  # the caller gets an error, so nothing may live on
        reason = (sb.failure or {}).get("message") or f"it is {sb.state}"
        if sb.live:
            await ctx.sandboxes.destroy(str(sb.id), org_id, oid)
        raise Conflict(f"sandbox {sb.id} did not start ({reason}); it is destroyed",
                       sandbox_id=str(sb.id))
    return JSONResponse(created(ctx, sb), status_code=201)


@e2b_router.get("/v2/sandboxes")
@e2b_router.get("/sandboxes")
async def list_sandboxes(
    ctx: Ctx, org_id: OrgId, response: Response,
    metadata: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=512)] = None,
) -> list[dict[str, Any]]:
    """Running and paused sandboxes (or `state=running,paused`), filtered by
    `metadata` (URL-encoded `k=v&...`). A page may hold fewer than `limit`
    items; `x-next-token` says there is more."""
    want = _metadata_filter(metadata)
    states = {s for s in (state or "running,paused").split(",") if s}
    if not states <= {"running", "paused"}:
        raise BadRequest("state is running, paused or both")
    items, nxt = await ctx.sandboxes.list_sandboxes(org_id, limit, next_token, None, None)
    out = [detail(v) for v in items
           if _state(v["state"]) in states
           and want.items() <= (v.get("metadata") or {}).items()]
    if nxt:
        response.headers["x-next-token"] = nxt
    return out


def _metadata_filter(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=True,
                                       max_num_fields=64)
    except ValueError:
        raise BadRequest("metadata must be URL-encoded key=value pairs") from None
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


@e2b_router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(ctx: Ctx, org_id: OrgId, sandbox_id: SandboxId) -> dict[str, Any]:
    return detail(sandbox_view(await _live(ctx, sandbox_id, org_id)))


@e2b_router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill(ctx: Ctx, oid: OpId, org_id: OrgId, sandbox_id: SandboxId) -> Response:
    await _live(ctx, sandbox_id, org_id)
    await ctx.sandboxes.destroy(sandbox_id, org_id, oid)
    return Response(status_code=204)


@e2b_router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(ctx: Ctx, oid: OpId, org_id: OrgId, sandbox_id: SandboxId,
                      body: TimeoutIn) -> Response:
    """The sandbox now ends `timeout` seconds from now (at least 10)."""
    await _live(ctx, sandbox_id, org_id)
    await _ttl(ctx, sandbox_id, org_id, body.timeout, oid)
    return Response(status_code=204)


@e2b_router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(ctx: Ctx, oid: OpId, org_id: OrgId, sandbox_id: SandboxId) -> Response:
    """Returns once paused (memory kept); 409 if it already is."""
    sb = await _live(ctx, sandbox_id, org_id)
    if sb.state == "paused":
        raise Conflict(f"sandbox {sandbox_id} is already paused")
    await ctx.sandboxes.intent("pause", sandbox_id, org_id, oid)
    sb = await ctx.sandboxes.wait_settled(sandbox_id, org_id, "paused", WAIT_S)
    if sb.state != "paused":
        raise Conflict(f"sandbox {sandbox_id} did not pause: it is {sb.state}")
    return Response(status_code=204)


@e2b_router.post("/v2/sandboxes/{sandbox_id}/connect")
@e2b_router.post("/sandboxes/{sandbox_id}/connect")
@e2b_router.post("/sandboxes/{sandbox_id}/resume")
async def connect(ctx: Ctx, oid: OpId, org_id: OrgId, sandbox_id: SandboxId,
                  body: ConnectIn | None = None) -> JSONResponse:
    """Resumes a paused sandbox (201) or joins a running one (200); either way
    it then lives `timeout` seconds from now."""
    timeout = (body or ConnectIn()).timeout
    sb = await _live(ctx, sandbox_id, org_id)
    status = 200
    if sb.state == "paused":
        await ctx.sandboxes.intent("resume", sandbox_id, org_id, oid)
        status = 201
    sb = await ctx.sandboxes.wait_settled(sandbox_id, org_id, "running", WAIT_S)
    if sb.state != "running":
        raise Conflict(f"sandbox {sandbox_id} is {sb.state}, not running")
    sb = await _ttl(ctx, sandbox_id, org_id, timeout, oid)
    return JSONResponse(created(ctx, sb), status_code=status)

