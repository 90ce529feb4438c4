"""Request/reply on this host's own subject: exec and files for running VMs."""
from __future__ import annotations

import asyncio
import base64
import json
import logging

from pydantic import ValidationError

from common.logging import log_context
from contracts.rpc import (Done, HostExec, HostExecChunk, HostExecResult, HostExecStream,
                           HostFileData, HostFileEntries, HostFileEntry, HostFileGet,
                           HostFileList, HostFilePut, RpcError)
from contracts.subjects import host_rpc_subject

from ..application.ports import ExecRequest

log = logging.getLogger("corral.host_agent.rpc")
MAX_REQUEST = 8 << 20
REQUESTS = {"exec": HostExec, "exec.stream": HostExecStream, "files.put": HostFilePut,
            "files.get": HostFileGet, "files.list": HostFileList}


class RpcRefused(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def _guest_code(e: Exception) -> str:
    code = getattr(e, "code", "")
    if isinstance(e, ValueError) or code in ("EINVAL", "ENAMETOOLONG", "EISDIR", "ENOTDIR"):
        return "invalid"
    if code == "ENOENT":
        return "not_found"
    if code == "EFBIG":
        return "too_large"
    return "internal"


async def _check(ctx, req) -> None:  # noqa: ANN001
    vm = await asyncio.to_thread(ctx.records.get, req.sandbox_id)
    if vm is None or vm.org_id != req.org_id:
        raise RpcRefused("not_found", "no such sandbox on this host")
    if vm.state != "running":
        raise RpcRefused("conflict", f"sandbox is {vm.state}")


async def _exec(ctx, req, on_chunk=None) -> HostExecResult:  # noqa: ANN001
    r = await ctx.driver.exec(req.sandbox_id, ExecRequest(
        cmd=req.cmd, env=req.env, cwd=req.cwd, timeout_s=req.timeout_s,
        stdin=req.stdin.encode() if req.stdin is not None else None,
        output_cap=req.output_cap), on_chunk)
    return HostExecResult(exit_code=r.exit_code, stdout=r.stdout.decode("utf-8", "replace"),
                          stderr=r.stderr.decode("utf-8", "replace"),
                          duration_ms=r.duration_ms, timed_out=r.timed_out,
                          truncated=r.truncated)


async def _stream(ctx, req: HostExecStream) -> None:  # noqa: ANN001
    """Runs after the request was accepted: chunks, then one exit or error."""
    nc = ctx.bus.nc

    async def send(chunk: HostExecChunk) -> None:
        await nc.publish(req.chunks_to, chunk.model_dump_json().encode())

    async def on_chunk(c) -> None:  # noqa: ANN001 - ExecChunk
        await send(HostExecChunk(stream=c.stream, data=c.data.decode("utf-8", "replace")))
    try:
        result = await _exec(ctx, req, on_chunk)
        await send(HostExecChunk(stream="exit", result=result))
    except Exception as e:  # noqa: BLE001 - the stream must end with an answer
        await send(HostExecChunk(stream="error",
                                 error=RpcError(error=_guest_code(e), detail=str(e)[:300])))


async def _dispatch(ctx, op: str, req) -> object:  # noqa: ANN001
    await _check(ctx, req)
    d = ctx.driver
    if op == "exec":
        return await _exec(ctx, req)
    if op == "exec.stream":
        return None  # accepted; the caller starts _stream
    if op == "files.put":
        await d.put_file(req.sandbox_id, req.path, base64.b64decode(req.data_b64))
        return Done()
    if op == "files.get":
        return HostFileData(data_b64=base64.b64encode(
            await d.get_file(req.sandbox_id, req.path)).decode())
    entries = await d.list_files(req.sandbox_id, req.path)
    return HostFileEntries(entries=[HostFileEntry(name=e.name, size=e.size, is_dir=e.is_dir,
                                                  mode=e.mode) for e in entries])


async def serve_rpc(ctx, stop: asyncio.Event) -> None:  # noqa: ANN001 - HostAgentContext
    prefix = host_rpc_subject(ctx.host_id, "")
    tasks: set[asyncio.Task] = set()

    async def answer(msg) -> None:  # noqa: ANN001
        op = msg.subject[len(prefix):]
        try:
            if op not in REQUESTS or len(msg.data) > MAX_REQUEST:
                raise RpcRefused("invalid", "unknown operation or request too large")
            try:
                req = REQUESTS[op].model_validate(json.loads(msg.data))
            except (ValidationError, ValueError):
                raise RpcRefused("invalid", "malformed request") from None
            with log_context(op_id=req.op_id, sandbox_id=req.sandbox_id):
                try:
                    reply = await _dispatch(ctx, op, req)
                    if reply is None:
                        await msg.respond(Done().model_dump_json().encode())
                        await _stream(ctx, req)
                        return
                except RpcRefused:
                    raise
                except Exception as e:  # noqa: BLE001 - every failure gets an answer
                    code = _guest_code(e)
                    if code == "internal":
                        log.warning("%s failed: %r", op, e)
                    raise RpcRefused(code, str(e)[:300]) from None
        except RpcRefused as e:
            reply = RpcError(error=e.code, detail=e.detail)
        await msg.respond(reply.model_dump_json().encode())

    def spawn(msg) -> None:  # noqa: ANN001
        t = asyncio.ensure_future(answer(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def on_msg(msg) -> None:  # noqa: ANN001
        spawn(msg)

    sub = await ctx.bus.nc.subscribe(prefix + ">", cb=on_msg)
    await stop.wait()
    await sub.unsubscribe()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
