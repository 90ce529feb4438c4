"""The public REST API (see shared API.md)."""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.logging import log_context
from common.rpc import RpcFailure
from common.tracing import current_traceparent, tracer
from contracts.rpc import Principal
from contracts.sandbox import STATES, SandboxSpec

from ..adapters.auth_client import Unauthorized
from ..application.errors import TooMany, UseCaseError
from ..domain.view import sandbox_view
from .admin_routes import admin_router
from .deps import Forbidden, op_id, org_principal
from .fleet_routes import fleet_router
from .io_routes import MAX_FILE, io_router
from .middleware import EdgeMiddleware
from .problems import problem, problem_openapi
from .snapshot_routes import snapshot_router
from .usage_routes import usage_router

log = logging.getLogger("corral.gateway")
SandboxId = Annotated[str, Path(min_length=1, max_length=64)]


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


def create_app(ctx) -> FastAPI:  # noqa: ANN001 - GatewayContext from bootstrap
    app = FastAPI(title="Corral API", version="1.0.0",
                  description="Isolated Linux sandboxes backed by microVMs.")
    app.openapi = lambda: problem_openapi(app)
    app.state.ctx = ctx
    s = ctx.settings
    app.add_middleware(EdgeMiddleware, max_body=s.max_body_bytes, upload_paths=("/files",),
                       max_upload=MAX_FILE)
    _errors(app)
    app.include_router(admin_router)
    app.include_router(io_router)
    app.include_router(fleet_router)
    app.include_router(usage_router)
    app.include_router(snapshot_router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        ok, detail = await ctx.ready()
        if not ok:
            return problem(503, detail, op_id(request))
        return JSONResponse({"status": "ready"})

    @app.post("/v1/sandboxes", status_code=202, tags=["sandboxes"],
              responses={201: {"model": SandboxOut, "description": "running (?wait=true)"},
                         202: {"model": SandboxOut, "description":
                               "accepted; with ?wait=true: still starting when the wait ended"},
                         502: {"description": "with ?wait=true: the sandbox failed to start"}})
    async def create_sandbox(
        request: Request, p: Annotated[Principal, Depends(org_principal)],
        spec: SandboxSpec | None = None,
        wait: bool = False,
        timeout_s: Annotated[float | None, Query(gt=0, le=600)] = None,
        idempotency_key: Annotated[str | None, Header(max_length=128, pattern=r"^[\x21-\x7e]+$")] = None,
    ) -> JSONResponse:
        oid = op_id(request)
        spec = spec or SandboxSpec()
        wait_s = ctx.limiter.retry_after(p.org_id)
        if wait_s:
            raise TooMany("create rate limit reached for this org", wait_s)
        with tracer("corral.gateway").start_as_current_span("create_sandbox"):
            sb, created = await asyncio.to_thread(
                ctx.ledger.request, p.org_id, spec, oid, current_traceparent(), idempotency_key,
                ctx.limits)
        with log_context(sandbox_id=str(sb.id)):
            log.info("sandbox requested" if created else "idempotent replay of create")
            if not wait:
                return JSONResponse(sandbox_view(sb), status_code=202)
            if not created and sb.started_at:  # a replay: the original result was 201
                return JSONResponse(sandbox_view(sb), status_code=201)
            return await _wait_running(ctx, str(sb.id), p.org_id, oid,
                                       timeout_s or s.wait_timeout_s)

    @app.get("/v1/sandboxes", response_model=SandboxPage, tags=["sandboxes"])
    async def list_sandboxes(
        p: Annotated[Principal, Depends(org_principal)],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        state: Literal[STATES] | None = None,  # type: ignore[valid-type]
        name: Annotated[str | None, Query(max_length=63)] = None,
    ) -> dict:
        try:
            items, nxt = await ctx.read_model.list(p.org_id, limit, cursor, state, name)
        except ValueError as e:
            raise UseCaseError(str(e)) from None
        return {"items": items, "next_cursor": nxt}

    @app.get("/v1/sandboxes/{sandbox_id}", response_model=SandboxOut, tags=["sandboxes"])
    async def get_sandbox(sandbox_id: SandboxId,
                          p: Annotated[Principal, Depends(org_principal)]) -> dict:
        return sandbox_view(await asyncio.to_thread(ctx.ledger.find, sandbox_id, p.org_id))

    @app.delete("/v1/sandboxes/{sandbox_id}", status_code=202, response_model=SandboxOut,
                tags=["sandboxes"])
    async def delete_sandbox(request: Request, sandbox_id: SandboxId,
                             p: Annotated[Principal, Depends(org_principal)]) -> dict:
        sb = await asyncio.to_thread(ctx.ledger.request_destroy, sandbox_id, p.org_id,
                                     op_id(request), current_traceparent())
        return sandbox_view(sb)

    def lifecycle_route(verb: str, use_case) -> None:  # noqa: ANN001
        async def route(request: Request, sandbox_id: SandboxId,
                        p: Annotated[Principal, Depends(org_principal)]) -> dict:
            sb = await asyncio.to_thread(use_case, sandbox_id, p.org_id, op_id(request),
                                         current_traceparent())
            return sandbox_view(sb)
        app.post(f"/v1/sandboxes/{{sandbox_id}}/{verb}", status_code=202,
                 response_model=SandboxOut, tags=["sandboxes"], name=f"{verb}_sandbox")(route)

    for verb, use_case in (("stop", ctx.ledger.request_stop), ("start", ctx.ledger.request_start),
                           ("pause", ctx.ledger.request_pause),
                           ("resume", ctx.ledger.request_resume)):
        lifecycle_route(verb, use_case)

    @app.post("/v1/sandboxes/{sandbox_id}/ttl", response_model=SandboxOut, tags=["sandboxes"])
    async def extend_ttl(request: Request, sandbox_id: SandboxId, body: TtlIn,
                         p: Annotated[Principal, Depends(org_principal)]) -> dict:
        sb = await asyncio.to_thread(ctx.ledger.extend_ttl, sandbox_id, p.org_id,
                                     body.ttl_seconds, op_id(request), current_traceparent(),
                                     datetime.now(timezone.utc))
        return sandbox_view(sb)

    @app.get("/v1/sandboxes/{sandbox_id}/events", response_model=EventPage, tags=["sandboxes"])
    async def sandbox_events(
        sandbox_id: SandboxId, p: Annotated[Principal, Depends(org_principal)],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
    ) -> dict:
        events = await asyncio.to_thread(ctx.ledger.history, sandbox_id, p.org_id)
        start = int(cursor or 0)
        page = events[start:start + limit]
        nxt = str(start + limit) if start + limit < len(events) else None
        return {"items": page, "next_cursor": nxt}

    return app


async def _wait_running(ctx, sandbox_id: str, org_id: str, oid: str,  # noqa: ANN001
                        timeout_s: float) -> JSONResponse:
    deadline = time.monotonic() + timeout_s
    while True:
        sb = await asyncio.to_thread(ctx.ledger.find, sandbox_id, org_id)
        if sb.state == "running":
            return JSONResponse(sandbox_view(sb), status_code=201)
        if sb.state in ("failed", "lost", "destroyed", "stopping", "stopped"):
            return problem(502, f"sandbox did not start: it is {sb.state}", oid,
                           code="sandbox-failed", sandbox_id=sandbox_id,
                           failure=sb.failure, state=sb.state)
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # created all the same: the caller polls from here
            return JSONResponse(sandbox_view(sb), status_code=202)
        await ctx.waiters.wait(sandbox_id, min(0.5, remaining))


def _errors(app: FastAPI) -> None:
    def oid(request: Request) -> str:
        return request.scope.get("state", {}).get("op_id", "-")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()[:50]]
        return problem(422, "request validation failed", oid(request), code="validation",
                       errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        return problem(exc.status_code, detail, oid(request), headers=getattr(exc, "headers", None))

    @app.exception_handler(UseCaseError)
    async def _usecase(request: Request, exc: UseCaseError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, TooMany) else None
        return problem(exc.status, exc.detail, oid(request), code=exc.code.replace("_", "-"),
                       headers=headers)

    @app.exception_handler(Unauthorized)
    async def _unauth(request: Request, exc: Unauthorized) -> JSONResponse:
        return problem(401, "missing or invalid API key", oid(request),
                       headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, str(exc), oid(request))

    @app.exception_handler(RpcFailure)
    async def _rpc(request: Request, exc: RpcFailure) -> JSONResponse:
        mapping = {"not_found": 404, "invalid": 422, "conflict": 409, "unauthorized": 401,
                   "too_large": 413}
        status = mapping.get(exc.code, 503)
        return problem(status, exc.detail if status != 503 else "a dependency is unavailable",
                       oid(request))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return problem(500, "internal error; quote the op_id when reporting it", oid(request))
