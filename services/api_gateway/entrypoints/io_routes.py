"""Commands and files inside a running sandbox, relayed to its host agent."""
from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.rpc import request as rpc
from contracts.rpc import (Done, HostExec, HostExecResult, HostExecStream, HostFileData,
                           HostFileEntries, HostFileGet, HostFileList, HostFilePut, Principal)
from contracts.subjects import host_rpc_subject

from ..application.errors import Conflict
from .deps import op_id, org_principal
from .sse import stream_exec

io_router = APIRouter(tags=["sandboxes"])
SandboxId = Annotated[str, Path(min_length=1, max_length=64)]
FilePath = Annotated[str, Query(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$")]
MAX_FILE = 4 << 20
MAX_REPLY = 12 << 20


class ExecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: list[Annotated[str, Field(max_length=65536)]] = Field(min_length=1, max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    cwd: str | None = Field(default=None, max_length=4096, pattern=r"^/[^\x00]*$")
    timeout_s: float = Field(default=60, gt=0, le=3600)
    stdin: str | None = Field(default=None, max_length=1 << 20)

    @field_validator("cmd")
    @classmethod
    def _no_nul(cls, v: list[str]) -> list[str]:
        if any("\0" in a for a in v) or not v[0]:
            raise ValueError("arguments must be non-empty at [0] and contain no NUL")
        return v


async def _running(request: Request, sandbox_id: str, org_id: str) -> str:
    sb = await asyncio.to_thread(request.app.state.ctx.ledger.find, sandbox_id, org_id)
    if sb.state != "running" or not sb.host_id:
        raise Conflict(f"sandbox is {sb.state}, not running")
    return sb.host_id


@io_router.post("/v1/sandboxes/{sandbox_id}/exec", response_model=HostExecResult,
                responses={200: {"content": {"text/event-stream": {
                    "schema": {"type": "string"},
                    "description": "stdout/stderr chunks, then one exit (or error) event; "
                                   "see docs/api-streaming.md"}}}})
async def exec_in_sandbox(request: Request, sandbox_id: SandboxId, body: ExecIn,
                          p: Annotated[Principal, Depends(org_principal)],
                          accept: Annotated[str | None, Header(max_length=512)] = None,
                          ) -> HostExecResult:
    host = await _running(request, sandbox_id, p.org_id)
    if accept and "text/event-stream" in accept:
        nc = request.app.state.ctx.bus.nc
        inbox = nc.new_inbox()
        req = HostExecStream(sandbox_id=sandbox_id, org_id=p.org_id, op_id=op_id(request),
                             chunks_to=inbox, **body.model_dump())
        return StreamingResponse(await stream_exec(nc, host_rpc_subject(host, "exec.stream"),
                                                   req, op_id(request)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    req = HostExec(sandbox_id=sandbox_id, org_id=p.org_id, op_id=op_id(request),
                   **body.model_dump())
    return await rpc(request.app.state.ctx.bus.nc, host_rpc_subject(host, "exec"), req,
                     HostExecResult, timeout=body.timeout_s + 15, max_bytes=MAX_REPLY)


@io_router.put("/v1/sandboxes/{sandbox_id}/files", status_code=204,
               openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                   "schema": {"type": "string", "format": "binary"}}}}})
async def put_file(request: Request, sandbox_id: SandboxId, path: FilePath,
                   p: Annotated[Principal, Depends(org_principal)]) -> Response:
    host = await _running(request, sandbox_id, p.org_id)
    data = await request.body()
    req = HostFilePut(sandbox_id=sandbox_id, org_id=p.org_id, op_id=op_id(request), path=path,
                      data_b64=base64.b64encode(data).decode())
    await rpc(request.app.state.ctx.bus.nc, host_rpc_subject(host, "files.put"), req, Done,
              timeout=60)
    return Response(status_code=204)


@io_router.get("/v1/sandboxes/{sandbox_id}/files", response_class=Response,
               responses={200: {"content": {"application/octet-stream": {}}}})
async def get_file(request: Request, sandbox_id: SandboxId, path: FilePath,
                   p: Annotated[Principal, Depends(org_principal)]) -> Response:
    host = await _running(request, sandbox_id, p.org_id)
    req = HostFileGet(sandbox_id=sandbox_id, org_id=p.org_id, op_id=op_id(request), path=path)
    out = await rpc(request.app.state.ctx.bus.nc, host_rpc_subject(host, "files.get"), req,
                    HostFileData, timeout=60, max_bytes=MAX_REPLY)
    return Response(base64.b64decode(out.data_b64), media_type="application/octet-stream")


@io_router.get("/v1/sandboxes/{sandbox_id}/files/list", response_model=HostFileEntries)
async def list_files(request: Request, sandbox_id: SandboxId, path: FilePath,
                     p: Annotated[Principal, Depends(org_principal)]) -> HostFileEntries:
    host = await _running(request, sandbox_id, p.org_id)
    req = HostFileList(sandbox_id=sandbox_id, org_id=p.org_id, op_id=op_id(request), path=path)
    return await rpc(request.app.state.ctx.bus.nc, host_rpc_subject(host, "files.list"), req,
                     HostFileEntries, timeout=30, max_bytes=MAX_REPLY)
