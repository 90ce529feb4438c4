"""Background processes and PTYs inside a running sandbox (docs/api-processes.md)."""
from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from contracts.procs import MAX_INPUT, HostProcInfo, Signal

from ..application.errors import TooLarge
from .deps import Ctx, OpId, Org
from .io_routes import ExecIn, SandboxId
from .sse import exec_events

process_router = APIRouter(tags=["processes"])
Pid = Annotated[int, Path(ge=1, le=1 << 22)]


class PtySize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cols: int = Field(ge=1, le=4096)
    rows: int = Field(ge=1, le=4096)


class ProcessIn(ExecIn):
    """A command that runs until it exits, is killed or its `timeout_s` ends."""
    timeout_s: float | None = Field(  # type: ignore[assignment]
        default=None, gt=0, le=30 * 86400, description="kill it after this; default: never")
    stdin: bool = Field(default=False, description="keep its stdin open for `input`")  # type: ignore[assignment]
    tag: str | None = Field(default=None, max_length=256)
    pty: PtySize | None = Field(default=None, description="run it on a terminal this size "
                                "(output then comes as `pty`, stdin is open)")


class ProcessList(BaseModel):
    processes: list[HostProcInfo]


class Started(BaseModel):
    pid: int


class SignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: Signal = "SIGTERM"


def _spawn(body: ProcessIn) -> dict[str, Any]:
    call = body.model_dump(exclude={"pty"})
    if body.pty is not None:
        call.update(cols=body.pty.cols, rows=body.pty.rows, stdin=True)
    return {"action": "spawn", **call}


def _wants_stream(accept: str | None) -> bool:
    return bool(accept and "text/event-stream" in accept)


def _sse(chunks: Any, oid: str) -> StreamingResponse:
    return StreamingResponse(exec_events(chunks, oid), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "start (pid), stdout/stderr/pty (data_b64), then one exit or error event; "
                   "see docs/api-processes.md"}}


@process_router.post("/v1/sandboxes/{sandbox_id}/processes", status_code=201,
                     response_model=Started, responses=STREAM_DOC)
async def start_process(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId, body: ProcessIn,
                        accept: Annotated[str | None, Header(max_length=512)] = None
                        ) -> Started | StreamingResponse:
    """Starts it and answers its pid; with `Accept: text/event-stream`, streams
    its output instead (leaving the stream does not end the process)."""
    if _wants_stream(accept):
        return _sse(await ctx.io.proc_stream(org.org_id, sandbox_id, oid, _spawn(body)), oid)
    pid = (await ctx.io.proc(org.org_id, sandbox_id, oid, _spawn(body))).pid
    if pid is None:
        raise RuntimeError("the host agent answered no pid")
    return Started(pid=pid)


@process_router.get("/v1/sandboxes/{sandbox_id}/processes", response_model=ProcessList)
async def list_processes(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId) -> ProcessList:
    """The background processes that still run (not `exec` commands)."""
    res = await ctx.io.proc(org.org_id, sandbox_id, oid, {"action": "ps"})
    return ProcessList(processes=res.procs or [])


@process_router.get("/v1/sandboxes/{sandbox_id}/processes/{pid}/stream", responses=STREAM_DOC,
                    response_class=StreamingResponse)
async def attach_process(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId, pid: Pid,
                         stream_s: Annotated[float, Query(gt=0, le=86400)] = 3600
                         ) -> StreamingResponse:
    """Its output from now on, and its end (at most `stream_s` of it)."""
    return _sse(await ctx.io.proc_stream(org.org_id, sandbox_id, oid,
                                         {"action": "attach", "pid": pid,
                                          "stream_s": stream_s}), oid)


@process_router.post("/v1/sandboxes/{sandbox_id}/processes/{pid}/input", status_code=204,
                     openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                         "schema": {"type": "string", "format": "binary"}}}}})
async def process_input(request: Request, ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                        pid: Pid, eof: bool = False) -> Response:
    """Bytes for its stdin (or terminal), at most 1 MiB a call; `eof` closes it after."""
    data = await request.body()
    if len(data) > MAX_INPUT:
        raise TooLarge(f"input larger than {MAX_INPUT} bytes in one call")
    await ctx.io.proc(org.org_id, sandbox_id, oid, {
        "action": "input", "pid": pid, "eof": eof,
        "data_b64": base64.b64encode(data).decode()})
    return Response(status_code=204)


@process_router.post("/v1/sandboxes/{sandbox_id}/processes/{pid}/signal", status_code=204)
async def signal_process(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId, pid: Pid,
                         body: SignalIn) -> Response:
    """To its whole process group."""
    await ctx.io.proc(org.org_id, sandbox_id, oid,
                      {"action": "signal", "pid": pid, "signal": body.signal})
    return Response(status_code=204)


@process_router.delete("/v1/sandboxes/{sandbox_id}/processes/{pid}", status_code=204)
async def kill_process(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                       pid: Pid) -> Response:
    """SIGKILL to its process group; 404 if it is not running."""
    await ctx.io.proc(org.org_id, sandbox_id, oid,
                      {"action": "signal", "pid": pid, "signal": "SIGKILL"})
    return Response(status_code=204)


@process_router.post("/v1/sandboxes/{sandbox_id}/processes/{pid}/resize", status_code=204)
async def resize_pty(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId, pid: Pid,
                     body: PtySize) -> Response:
    await ctx.io.proc(org.org_id, sandbox_id, oid,
                      {"action": "resize", "pid": pid, "cols": body.cols, "rows": body.rows})
    return Response(status_code=204)

