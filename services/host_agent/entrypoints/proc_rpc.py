"""Background processes, PTYs, connections and watches inside running VMs:
the host's `proc` (one answer) and `proc.stream` (answered Done, then its
events) subjects."""
from __future__ import annotations

import asyncio
import base64
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from common.rpc import Reply, Send
from contracts.procs import HostProc, HostProcInfo, HostProcResult
from contracts.rpc import Done, HostExecChunk, HostExecResult, RpcError

from ..application.ports import ProcCall, ProcEvent
from ..application.service import Refused
from ..bootstrap import HostAgentContext

Streams = dict[tuple[str, str, str], asyncio.Future]  # running streams by (sandbox, org, id)
STREAMED = ("spawn", "attach", "connect", "watch")


def _proc_call(req: HostProc, attach: bool) -> ProcCall:
    return ProcCall(req.action, pid=req.pid, cmd=req.cmd, env=req.env, cwd=req.cwd,
                    user=req.user, tag=req.tag, timeout_s=req.timeout_s, stdin=req.stdin,
                    pty=(req.cols, req.rows) if req.cols and req.rows else None,
                    data=req.data(), eof=req.eof, signal=req.signal, attach=attach,
                    port=req.port, path=req.path, recursive=req.recursive)


def proc_routes(ctx: HostAgentContext, refuse: Callable[[Exception], RpcError]
                ) -> dict[str, tuple[Any, Callable[[Any], Awaitable[Any]]]]:
    svc = ctx.service
    streams: Streams = {}

    async def proc(req: HostProc) -> HostProcResult:
        if req.action == "detach":
            work = streams.get((req.sandbox_id, req.org_id, req.stream_id or ""))
            if work is not None:
                work.cancel()
            return HostProcResult(found=work is not None)
        if req.action in ("attach", "connect"):
            raise Refused("invalid", f"{req.action} is streamed: call proc.stream")
        ans = await svc.proc(req.sandbox_id, req.org_id, _proc_call(req, attach=False))
        return HostProcResult(pid=ans.pid, events=ans.events, overflowed=ans.overflowed,
                              procs=None if ans.procs is None else [
            HostProcInfo(pid=p.pid, cmd=p.cmd, cwd=p.cwd, tag=p.tag, env=p.env, pty=p.pty,
                         stdin=p.stdin) for p in ans.procs])

    async def proc_stream(req: HostProc) -> Reply:
        if req.action not in STREAMED:
            raise Refused("invalid", f"only {', '.join(STREAMED)} stream")
        await svc.running(req.sandbox_id, req.org_id)
        return Reply(Done(), then=functools.partial(_proc_stream, ctx, req, streams, refuse))

    return {"proc": (HostProc, proc), "proc.stream": (HostProc, proc_stream)}


async def _proc_stream(ctx: HostAgentContext, req: HostProc,
                       streams: Streams, refuse: Callable[[Exception], RpcError],
                       send: Send) -> None:
    """start, output, then exit or error; a `detach` for its stream_id, or
    `stream_s` passing, ends it quietly (the process runs on)."""
    seq = itertools.count()

    async def on_event(e: ProcEvent) -> None:
        await send(HostExecChunk(stream=e.kind, seq=next(seq), pid=e.pid,
                                 data_b64=base64.b64encode(e.data).decode() if e.data else None))
    key = (req.sandbox_id, req.org_id, req.stream_id or "")
    work = asyncio.ensure_future(ctx.service.proc(req.sandbox_id, req.org_id,
                                                  _proc_call(req, attach=True), on_event))
    if req.stream_id:
        streams[key] = work
    try:
        ans = await asyncio.wait_for(work, req.stream_s)
        r = ans.exit
        await send(HostExecChunk(stream="exit", seq=next(seq), result=HostExecResult(
            exit_code=r.exit_code if r else None, stdout="", stderr="",
            duration_ms=r.duration_ms if r else 0, timed_out=bool(r and r.timed_out),
            truncated=bool(r and r.truncated))))
    except TimeoutError:
        await send(HostExecChunk(stream="error", seq=next(seq), error=RpcError(
            error="timeout", detail="the stream's time ran out; the process runs on")))
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
    except Exception as e:  # noqa: BLE001 - the stream must end with an answer
        await send(HostExecChunk(stream="error", seq=next(seq), error=refuse(e)))
    finally:
        if streams.get(key) is work:
            del streams[key]
        work.cancel()
