"""Request/reply on this host's own subjects: exec and files inside running VMs."""
from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.rpc import Reply, Route, Send, serve
from contracts.rpc import (Done, HostExec, HostExecChunk, HostExecResult, HostExecStream,
                           HostFileData, HostFileEntries, HostFileEntry, HostFileGet, HostFileList,
                           HostFileOp, HostFileOpResult, HostFilePut, HostFileStat, RpcError)
from contracts.subjects import host_rpc_subject

from ..application.ports import ExecChunk, ExecRequest, ExecResult, FileOp, FileStat
from ..application.service import Refused
from ..bootstrap import HostAgentContext
from .proc_rpc import proc_routes

log = logging.getLogger("corral.host_agent.rpc")
MAX_REQUEST = 8 << 20
MAX_IN_FLIGHT = 64  # exec and file calls at once on this host; beyond: `busy`


def _code(e: Exception) -> str:
    if isinstance(e, Refused):
        return e.code
    code = getattr(e, "code", "")
    if isinstance(e, ValueError) or code in ("EINVAL", "ENAMETOOLONG", "EISDIR", "ENOTDIR"):
        return "invalid"
    if code in ("ENOENT", "ESRCH"):
        return "not_found"
    if code in ("EEXIST", "ENOTEMPTY", "EBUSY", "EPIPE"):
        return "conflict"
    if code == "EAGAIN":
        return "busy"
    if code in ("ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "EHOSTUNREACH"):
        return "unreachable"
    if code == "EFBIG":
        return "too_large"
    return "internal"


def _refuse(e: Exception) -> RpcError:
    """Every failure is answered with its stable code (a guest's errno mapped)."""
    code = _code(e)
    if code == "internal":
        log.warning("request failed: %r", e)
    return RpcError(error=code, detail=(e.detail if isinstance(e, Refused) else str(e))[:300])


def _exec_request(req: HostExec) -> ExecRequest:
    return ExecRequest(cmd=req.cmd, env=req.env, cwd=req.cwd, timeout_s=req.timeout_s,
                       stdin=req.stdin.encode() if req.stdin is not None else None,
                       output_cap=req.output_cap, user=req.user)


def _exec_result(r: ExecResult) -> HostExecResult:
    return HostExecResult(exit_code=r.exit_code, stdout=r.stdout.decode("utf-8", "replace"),
                          stderr=r.stderr.decode("utf-8", "replace"),
                          duration_ms=r.duration_ms, timed_out=r.timed_out,
                          truncated=r.truncated)


def _stat(s: FileStat) -> HostFileStat:
    return HostFileStat(name=s.name, name_b64=s.name_b64, size=s.size, is_dir=s.is_dir,
                        mode=s.mode, type=s.kind, mtime=s.mtime, target=s.target)


def routes(ctx: HostAgentContext) -> dict[str, Route]:
    svc = ctx.service

    async def exec_(req: HostExec) -> HostExecResult:
        return _exec_result(await svc.exec(req.sandbox_id, req.org_id, _exec_request(req)))

    async def exec_stream(req: HostExecStream) -> Reply:
        await svc.running(req.sandbox_id, req.org_id)  # refused before anything streams
        return Reply(Done(), then=functools.partial(_stream, ctx, req))

    async def put(req: HostFilePut) -> Done:
        await svc.put_file(req.sandbox_id, req.org_id, req.raw_path(),
                           base64.b64decode(req.data_b64), req.append)
        return Done()

    async def get(req: HostFileGet) -> HostFileData:
        if req.offset is not None:
            piece, total = await svc.get_range(req.sandbox_id, req.org_id, req.raw_path(),
                                               req.offset, req.length)
            return HostFileData(data_b64=base64.b64encode(piece).decode(), total=total)
        data = await svc.get_file(req.sandbox_id, req.org_id, req.raw_path())
        return HostFileData(data_b64=base64.b64encode(data).decode())

    async def list_(req: HostFileList) -> HostFileEntries:
        listing = await svc.list_files(req.sandbox_id, req.org_id, req.raw_path())
        return HostFileEntries(entries=[HostFileEntry(name=e.name, name_b64=e.name_b64,
                                                      size=e.size, is_dir=e.is_dir,
                                                      mode=e.mode)
                                        for e in listing.entries],
                               truncated=listing.truncated)

    async def op(req: HostFileOp) -> HostFileOpResult:
        st = await svc.file_op(req.sandbox_id, req.org_id, FileOp(
            req.action, req.raw_path(), req.raw_to(), req.recursive, req.parents))
        return HostFileOpResult(entry=_stat(st) if st is not None else None)

    calls: dict[str, tuple[Any, Callable[[Any], Awaitable[Any]]]] = {
        "exec": (HostExec, exec_), "exec.stream": (HostExecStream, exec_stream),
        **proc_routes(ctx, _refuse),
        "files.put": (HostFilePut, put), "files.get": (HostFileGet, get),
        "files.list": (HostFileList, list_), "files.op": (HostFileOp, op)}
    return {host_rpc_subject(ctx.host_id, op): call for op, call in calls.items()}


async def _stream(ctx: HostAgentContext, req: HostExecStream, send: Send) -> None:
    """After the request was accepted: chunks, then one exit or error, numbered."""
    seq = itertools.count()

    async def on_chunk(c: ExecChunk) -> None:
        await send(HostExecChunk(stream=c.stream, seq=next(seq),
                                 data=c.data.decode("utf-8", "replace")))
    try:
        r = await ctx.service.exec(req.sandbox_id, req.org_id, _exec_request(req), on_chunk)
        await send(HostExecChunk(stream="exit", seq=next(seq), result=_exec_result(r)))
    except Exception as e:  # noqa: BLE001 - the stream must end with an answer
        err = _refuse(e)
        await send(HostExecChunk(stream="error", seq=next(seq), error=err))


async def serve_rpc(ctx: HostAgentContext, stop: asyncio.Event) -> None:
    await serve(ctx.bus.client, routes(ctx), stop, max_bytes=MAX_REQUEST, refuse=_refuse,
                limit=MAX_IN_FLIGHT)
