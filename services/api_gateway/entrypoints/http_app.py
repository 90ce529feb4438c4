"""The public REST API (see shared API.md): the app, its routers and error mapping."""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.rpc import RpcFailure

from ..adapters.auth_client import Unauthorized
from ..application.errors import TooMany, UseCaseError
from ..bootstrap import GatewayContext
from .admin_routes import admin_router
from .billing_routes import billing_router
from .deps import Forbidden, op_id
from .connect_wire import ConnectError, unary_error
from .e2b_routes import e2b_router
from .envd_routes import envd_router
from .event_routes import events_router
from .fleet_routes import fleet_router
from .image_routes import image_router
from .io_routes import io_router
from .port_routes import port_router
from .process_routes import process_router
from .pty_routes import pty_router
from .watch_routes import watch_router
from .middleware import EdgeMiddleware
from .problems import RPC_STATUS, problem, problem_openapi
from .sandbox_routes import sandbox_router
from .snapshot_routes import snapshot_router
from .usage_routes import usage_router

log = logging.getLogger("corral.gateway")


def create_app(ctx: GatewayContext) -> FastAPI:
    app = FastAPI(title="Corral API", version="1.0.0",
                  description="Isolated Linux sandboxes backed by microVMs.")
    app.openapi = lambda: problem_openapi(app)  # type: ignore[method-assign]
    app.state.ctx = ctx
    app.add_middleware(EdgeMiddleware, max_body=ctx.settings.max_body_bytes,
                       uploads=(("PUT", r"/v1/sandboxes/[^/]+/files"),
                                ("POST", r"/v1/sandboxes/[^/]+/files"),
                                ("POST", r"/e2b/envd/files")),
                       max_upload=ctx.settings.max_file_mib << 20,
                       big_uploads=(("POST", r"/v1/images"),),
                       max_big_upload=ctx.settings.build_context_max_mib << 20,
                       body_idle_s=ctx.settings.http_body_idle_s)
    _errors(app)
    for router in (admin_router, billing_router, io_router, fleet_router, usage_router,
                   snapshot_router, sandbox_router, events_router, image_router, process_router,
                   port_router, pty_router, watch_router):
        app.include_router(router)

    e2b = FastAPI(title="Corral: the E2B-compatible API", version="1.0.0",
                  description="E2B's sandbox REST API over Corral (docs/e2b.md).")
    e2b.state.ctx = ctx
    _errors(e2b, wrap=_e2b_error)

    async def connect_failure(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ConnectError)
        return unary_error(exc)
    e2b.add_exception_handler(ConnectError, connect_failure)
    e2b.include_router(e2b_router)
    e2b.include_router(envd_router)
    app.mount("/e2b", e2b)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        ok, detail = await ctx.ready()
        if not ok:
            return problem(503, detail, op_id(request))
        return JSONResponse({"status": "ready"})

    return app


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def _e2b_error(handler: Handler) -> Handler:
    """The same problem+json, with the `code` and `message` E2B's SDK reads."""
    async def shaped(request: Request, exc: Exception) -> JSONResponse:
        resp = await handler(request, exc)
        body = json.loads(bytes(resp.body))
        body.update(code=resp.status_code, message=body.get("detail", ""))
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        return JSONResponse(body, status_code=resp.status_code, headers=headers,
                            media_type=resp.media_type)
    return shaped


def _errors(app: FastAPI, wrap: Callable[[Handler], Handler] = lambda h: h) -> None:
    def oid(request: Request) -> str:
        return str(request.scope.get("state", {}).get("op_id", "-"))

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in list(exc.errors())[:50]]
        return problem(422, "request validation failed", oid(request), code="validation",
                       errors=errors)

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        return problem(exc.status_code, detail, oid(request),
                       headers=getattr(exc, "headers", None))

    async def use_case(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UseCaseError)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, TooMany) else None
        return problem(exc.status, exc.detail, oid(request), code=exc.code.replace("_", "-"),
                       headers=headers, **exc.extra)

    async def unauthorized(request: Request, exc: Exception) -> JSONResponse:
        return problem(401, "missing or invalid API key", oid(request),
                       headers={"WWW-Authenticate": "Bearer"})

    async def forbidden(request: Request, exc: Exception) -> JSONResponse:
        return problem(403, str(exc), oid(request))

    async def rpc_failure(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RpcFailure)
        status = RPC_STATUS.get(exc.code, 503)
        return problem(status, exc.detail if status != 503 else "a dependency is unavailable",
                       oid(request))

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return problem(500, "internal error; quote the op_id when reporting it", oid(request))

    handlers: dict[Any, Any] = {
        RequestValidationError: validation, StarletteHTTPException: http,
        UseCaseError: use_case, Unauthorized: unauthorized, Forbidden: forbidden,
        RpcFailure: rpc_failure, Exception: internal}
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, wrap(handler))
