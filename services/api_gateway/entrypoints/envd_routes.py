"""E2B's in-sandbox API (envd) at /e2b/envd, translated onto Corral's guest
I/O: the `process.Process` calls (envd_process.py), the
`filesystem.Filesystem` calls Corral has (Stat, ListDir, MakeDir, Move,
Remove; watchers: envd_watch.py), `/files` (read, write) and `/health`. The
sandbox is named by the `E2b-Sandbox-Id` header and authorised by its access
token (`X-Access-Token`, issued at create and connect); no API key travels
here."""
from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from common.rpc import RpcFailure

from ..application.errors import NotFound
from . import connect_wire as cw
from .deps import Ctx, OpId
from .envd_common import (NOT_RUNNING, Sandbox, Target, connect_error, entry_info,
                          sandbox_path)
from .envd_process import process_router
from .multipart import form_files
from .envd_watch import watch_router

envd_router = APIRouter(prefix="/envd", include_in_schema=False)
envd_router.include_router(process_router)
envd_router.include_router(watch_router)  # before the catch-all below


# -- filesystem ----------------------------------------------------------------------
async def _op(ctx: Ctx, oid: str, sb: Target, path: str, action: str, **kw: Any) -> Any:
    return (await ctx.io.file_op(sb.org_id, sb.sandbox_id, oid, {"path": path}, action,
                                 **kw)).entry


async def _list(ctx: Ctx, oid: str, sb: Target, path: str, depth: int) -> list[dict]:
    tree = await ctx.io.list_tree(sb.org_id, sb.sandbox_id, oid, path, depth)
    return [entry_info(posixpath.join(path, e.name), e) | {"name": posixpath.basename(e.name)}
            for e in tree.entries]


@envd_router.post("/filesystem.Filesystem/{method}")
async def filesystem(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox,
                     method: str) -> JSONResponse:
    try:
        msg = cw.unary_request(await request.body())
        if method == "Stat":
            path = sandbox_path(msg.get("path"))
            return JSONResponse({"entry": entry_info(path, await _op(ctx, oid, sb, path,
                                                                     "stat"))})
        if method == "ListDir":
            path, depth = sandbox_path(msg.get("path")), int(msg.get("depth") or 1)
            return JSONResponse({"entries": await _list(ctx, oid, sb, path,
                                                        min(max(depth, 1), 8))})
        if method == "MakeDir":
            path = sandbox_path(msg.get("path"))
            if await _exists(ctx, oid, sb, path):
                raise cw.ConnectError("already_exists", f"{path} exists")
            return JSONResponse({"entry": entry_info(path, await _op(ctx, oid, sb, path,
                                                                     "mkdir", parents=True))})
        if method == "Move":
            src, dst = sandbox_path(msg.get("source")), sandbox_path(msg.get("destination"))
            return JSONResponse({"entry": entry_info(dst, await _op(ctx, oid, sb, src,
                                                                    "rename", to=dst))})
        if method == "Remove":  # envd removes recursively
            await _op(ctx, oid, sb, sandbox_path(msg.get("path")), "remove", recursive=True)
            return JSONResponse({})
        raise cw.ConnectError("unimplemented", f"filesystem.{method[:64]} is not served by "
                              "Corral yet")
    except Exception as e:  # noqa: BLE001 - every failure is answered with its code
        return cw.unary_error(connect_error(e))


async def _exists(ctx: Ctx, oid: str, sb: Target, path: str) -> bool:
    try:
        await _op(ctx, oid, sb, path, "stat")
    except RpcFailure as e:
        if e.code == "not_found":
            return False
        raise
    return True


# -- /files and /health ----------------------------------------------------------------
def _http_error(e: Exception) -> JSONResponse:
    err = connect_error(e)
    status = cw.STATUS[err.code] if err.code != "failed_precondition" else 502
    message = NOT_RUNNING if status == 502 else err.message
    return JSONResponse({"code": status, "message": message}, status_code=status)


@envd_router.get("/files")
async def read_file(ctx: Ctx, oid: OpId, sb: Sandbox,
                    path: Annotated[str, Query(min_length=1, max_length=4096)]) -> Response:
    try:
        size, body = await ctx.transfers.download(sb.org_id, sb.sandbox_id, oid,
                                                  {"path": sandbox_path(path)})
    except Exception as e:  # noqa: BLE001 - answered with its status
        return _http_error(e)
    return StreamingResponse(body, media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})


@envd_router.post("/files")
async def write_files(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox,
                      path: Annotated[str | None, Query(max_length=4096)] = None) -> Response:
    """A multipart form (each part's filename its path, or `?path=` for one)
    or a raw body for `?path=`."""
    try:
        body = await request.body()
        kind = request.headers.get("content-type", "")
        files = (form_files(kind, body, path) if kind.startswith("multipart/form-data")
                 else [(path, body)] if path else [])
        if not files:
            raise cw.ConnectError("invalid_argument", "no file in the request")
        out = []
        for name, data in files:
            target = sandbox_path(name)
            await ctx.transfers.upload(sb.org_id, sb.sandbox_id, oid, {"path": target},
                                       _once(data))
            out.append({"name": posixpath.basename(target), "type": "file", "path": target})
    except Exception as e:  # noqa: BLE001 - answered with its status
        return _http_error(e)
    return JSONResponse(out)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


@envd_router.get("/health")
async def health(ctx: Ctx, sb: Sandbox) -> Response:
    try:
        found = await ctx.sandboxes.find(sb.sandbox_id, sb.org_id)
    except NotFound:
        found = None
    if found is None or found.state != "running":
        return JSONResponse({"code": 502, "message": f"{NOT_RUNNING}: it was not found"},
                            status_code=502)
    return Response(status_code=204)
