"""envd's `process.Process` service: Start, Connect, List, SendInput,
CloseStdin, SendSignal, Update (not StreamInput), over Corral's background
processes (docs/api-processes.md)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..adapters.host_client import OutputLost, StreamTimeout
from . import connect_wire as cw
from .deps import Ctx, OpId
from .envd_common import RPC_CODES, Sandbox, Target, basic_user, connect_error, sandbox_path
from .sse import KEEPALIVE_S, idle_ticks

process_router = APIRouter()


def _selector(msg: dict[str, Any]) -> dict[str, Any]:
    sel = msg.get("process")
    if not isinstance(sel, dict) or not (isinstance(sel.get("pid"), int) or
                                         isinstance(sel.get("tag"), str)):
        raise cw.ConnectError("invalid_argument", "process must name a pid or a tag")
    return sel


async def _pid(ctx: Ctx, oid: str, sb: Target, msg: dict[str, Any]) -> int:
    sel = _selector(msg)
    if isinstance(sel.get("pid"), int):
        return int(sel["pid"])
    procs = (await ctx.io.proc(sb.org_id, sb.sandbox_id, oid, {"action": "ps"})).procs or []
    for p in procs:
        if p.tag == sel["tag"]:
            return p.pid
    raise cw.ConnectError("not_found", f"no process tagged {sel['tag'][:64]!r}")


def _size(pty: Any) -> dict[str, int]:
    size = pty.get("size") if isinstance(pty, dict) else None
    if not isinstance(size, dict):
        raise cw.ConnectError("invalid_argument", "pty.size {cols, rows} is required")
    return {"cols": int(size.get("cols") or 0), "rows": int(size.get("rows") or 0)}


def _spawn(request: Request, msg: dict[str, Any]) -> dict[str, Any]:
    proc = msg.get("process") or {}
    if not isinstance(proc, dict):
        raise cw.ConnectError("invalid_argument", "process must be an object")
    cmd, args = proc.get("cmd"), proc.get("args") or []
    if not isinstance(cmd, str) or not isinstance(args, list):
        raise cw.ConnectError("invalid_argument", "process.cmd and args are required")
    ms = request.headers.get("connect-timeout-ms")
    call: dict[str, Any] = {"action": "spawn", "cmd": [cmd, *map(str, args)],
                            "env": proc.get("envs") or {}, "stdin": bool(msg.get("stdin")),
                            "tag": msg.get("tag")}
    if ms and ms != "0":  # the stream's deadline is the command's: then it is killed
        call["timeout_s"] = call["stream_s"] = cw.timeout_s(ms, 60, 86400)
    if proc.get("cwd"):
        call["cwd"] = sandbox_path(proc["cwd"])
    if user := basic_user(request.headers.get("authorization")):
        call["user"] = user
    if msg.get("pty") is not None:
        call.update(_size(msg["pty"]), stdin=True)
    return call


def _streamed(ctx: Ctx, oid: str, sb: Target, call: dict[str, Any]) -> Any:
    async def events() -> AsyncIterator[bytes]:
        try:
            chunks = await ctx.io.proc_stream(sb.org_id, sb.sandbox_id, oid, call)
        except Exception as e:  # noqa: BLE001 - every failure ends the stream with its code
            yield cw.end_stream(connect_error(e))
            return
        async for part in _events(chunks):
            yield part
    return StreamingResponse(events(), media_type=cw.STREAM_TYPE)


@process_router.post("/process.Process/Start")
async def start(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> StreamingResponse:
    """A process: start (its pid), data events, end; keepalives while silent.
    Leaving early does not end it (List, Connect, SendSignal reach it)."""
    try:
        call = _spawn(request, cw.stream_request(await request.body()))
    except Exception as e:  # noqa: BLE001 - every failure ends the stream with its code
        return StreamingResponse(iter([cw.end_stream(connect_error(e))]),
                                 media_type=cw.STREAM_TYPE)
    return _streamed(ctx, oid, sb, call)


@process_router.post("/process.Process/Connect")
async def connect(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> StreamingResponse:
    try:
        pid = await _pid(ctx, oid, sb, cw.stream_request(await request.body()))
        ms = request.headers.get("connect-timeout-ms")
        call = {"action": "attach", "pid": pid, **({"stream_s": cw.timeout_s(ms, 60, 86400)}
                                                   if ms and ms != "0" else {})}
    except Exception as e:  # noqa: BLE001 - every failure ends the stream with its code
        return StreamingResponse(iter([cw.end_stream(connect_error(e))]),
                                 media_type=cw.STREAM_TYPE)
    return _streamed(ctx, oid, sb, call)


async def _events(chunks: Any) -> AsyncIterator[bytes]:
    ticks = idle_ticks(chunks, KEEPALIVE_S)
    error: cw.ConnectError | None = None
    try:
        async for chunk in ticks:
            if chunk is None:
                yield cw.envelope({"event": {"keepalive": {}}})
            elif chunk.stream == "start":
                yield cw.envelope({"event": {"start": {"pid": chunk.pid}}})
            elif chunk.stream in ("stdout", "stderr", "pty"):
                yield cw.envelope({"event": {"data": {chunk.stream: chunk.data_b64 or ""}}})
            elif chunk.stream == "exit" and chunk.result is not None:
                r = chunk.result
                code = r.exit_code if r.exit_code is not None else -1
                signalled = code < 0
                status = ("killed: timeout" if r.timed_out else
                          f"signal: {-code}" if signalled else f"exit status {code}")
                yield cw.envelope({"event": {"end": {
                    "exitCode": code, "exited": not signalled, "status": status}}})
            else:
                err = chunk.error
                error = cw.ConnectError(RPC_CODES.get(err.error, "unavailable") if err
                                        else "unavailable", err.detail if err else "failed")
    except (StreamTimeout, OutputLost) as e:
        error = cw.ConnectError("unavailable", f"the command's output was lost: {e}")
    finally:
        await ticks.aclose()
        await chunks.aclose()
    yield cw.end_stream(error)


SIGNALS = {"SIGNAL_SIGKILL": "SIGKILL", "SIGNAL_SIGTERM": "SIGTERM", 9: "SIGKILL", 15: "SIGTERM"}


@process_router.post("/process.Process/{method}")
async def process_unary(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox,
                        method: str) -> JSONResponse:
    """List, SendSignal, SendInput, CloseStdin, Update (a PTY's size)."""
    try:
        msg = cw.unary_request(await request.body())
        if method == "List":
            procs = (await ctx.io.proc(sb.org_id, sb.sandbox_id, oid, {"action": "ps"})).procs
            return JSONResponse({"processes": [
                {"pid": p.pid, **({"tag": p.tag} if p.tag else {}),
                 "config": {"cmd": p.cmd[0], "args": p.cmd[1:], "envs": p.env, "cwd": p.cwd}}
                for p in procs or []]})
        call: dict[str, Any]
        if method == "SendSignal":
            sig = SIGNALS.get(msg.get("signal"))
            if sig is None:
                raise cw.ConnectError("invalid_argument", "signal must be SIGKILL or SIGTERM")
            call = {"action": "signal", "signal": sig}
        elif method == "SendInput":
            given = msg.get("input")
            data = given.get("stdin", given.get("pty")) if isinstance(given, dict) else None
            if not isinstance(data, str):
                raise cw.ConnectError("invalid_argument", "input.stdin or input.pty is required")
            call = {"action": "input", "data_b64": data}
        elif method == "CloseStdin":
            call = {"action": "input", "eof": True}
        elif method == "Update":
            call = {"action": "resize", **_size(msg.get("pty"))}
        else:
            raise cw.ConnectError("unimplemented", f"process.{method[:64]} is not served by "
                                  "Corral")
        call["pid"] = await _pid(ctx, oid, sb, msg)
        await ctx.io.proc(sb.org_id, sb.sandbox_id, oid, call)
        return JSONResponse({})
    except Exception as e:  # noqa: BLE001 - every failure is answered with its code
        return cw.unary_error(connect_error(e))
