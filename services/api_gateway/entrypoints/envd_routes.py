"""E2B's in-sandbox API (envd) at /e2b/envd, translated onto Corral's guest
I/O: the `process.Process` calls (Start, Connect, List, SendInput,
CloseStdin, SendSignal, Update; not StreamInput), the
`filesystem.Filesystem` calls Corral has (Stat, ListDir, MakeDir, Move,
Remove), `/files` (read, write) and `/health`. The sandbox is named by the
`E2b-Sandbox-Id` header and authorised by its access token (`X-Access-Token`,
issued at create and connect); no API key travels here."""
from __future__ import annotations

import base64
import email.parser
import email.policy
import posixpath
import stat as st
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from common.rpc import RpcFailure
from contracts.rpc import HostFileStat

from ..adapters.host_client import OutputLost, StreamTimeout
from ..application.errors import NotFound, TooMany, UseCaseError
from . import connect_wire as cw
from .deps import Ctx, OpId, context
from .sse import KEEPALIVE_S, idle_ticks

envd_router = APIRouter(prefix="/envd", include_in_schema=False)
HOME = "/root"  # where relative paths start: Corral's default image runs as root
RPC_CODES = {"not_found": "not_found", "timeout": "deadline_exceeded", "invalid": "invalid_argument", "too_large":
             "resource_exhausted", "conflict": "already_exists", "unauthorized":
             "permission_denied", "busy": "resource_exhausted"}
NOT_RUNNING = "The sandbox was not found or is not running"


class Target:
    """The sandbox a request is for, authorised by its access token."""

    def __init__(self, request: Request,
                 e2b_sandbox_id: Annotated[str | None, Header(max_length=64)] = None,
                 x_access_token: Annotated[str | None, Header(max_length=200)] = None) -> None:
        ctx = context(request)
        org = (ctx.sandboxes.token_org(x_access_token, e2b_sandbox_id)
               if e2b_sandbox_id and x_access_token else None)
        if org is None:
            raise cw.ConnectError("unauthenticated", "E2b-Sandbox-Id with its X-Access-Token "
                                  "(from create or connect) is required")
        self.sandbox_id, self.org_id = e2b_sandbox_id or "", org


Sandbox = Annotated[Target, Depends(Target)]


def connect_error(e: Exception) -> cw.ConnectError:
    if isinstance(e, cw.ConnectError):
        return e
    if isinstance(e, RpcFailure):
        return cw.ConnectError(RPC_CODES.get(e.code, "unavailable"), e.detail)
    if isinstance(e, NotFound):
        return cw.ConnectError("not_found", f"{NOT_RUNNING}: {e.detail}")
    if isinstance(e, TooMany):
        return cw.ConnectError("resource_exhausted", e.detail)
    if isinstance(e, UseCaseError):
        return cw.ConnectError("failed_precondition", e.detail)
    if isinstance(e, ValidationError | ValueError):
        return cw.ConnectError("invalid_argument", str(e)[:300])
    return cw.ConnectError("internal", "internal error")


def basic_user(header: str | None) -> str | None:
    """E2B names the user to run as in `Authorization: Basic base64(user:)`."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        user = base64.b64decode(header[6:], validate=True).decode().partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        raise cw.ConnectError("invalid_argument", "bad Authorization header") from None
    return user or None


def sandbox_path(path: Any) -> str:
    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        raise cw.ConnectError("invalid_argument", "path must be a non-empty string")
    return posixpath.normpath(posixpath.join(HOME, path))


def entry_info(path: str, e: HostFileStat | Any) -> dict[str, Any]:
    kind = (st.S_ISLNK(e.mode) and "FILE_TYPE_SYMLINK") or (
        "FILE_TYPE_DIRECTORY" if e.is_dir else "FILE_TYPE_FILE")
    out = {"name": e.name, "type": kind, "path": path, "size": str(e.size), "mode": e.mode,
           "permissions": st.filemode(e.mode), "owner": "", "group": ""}
    if getattr(e, "mtime", None):
        out["modifiedTime"] = datetime.fromtimestamp(e.mtime, UTC).isoformat().replace(
            "+00:00", "Z")
    if getattr(e, "target", None):
        out["symlinkTarget"] = e.target
    return out


# -- process -----------------------------------------------------------------------
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


@envd_router.post("/process.Process/Start")
async def start(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> StreamingResponse:
    """A process: start (its pid), data events, end; keepalives while silent.
    Leaving early does not end it (List, Connect, SendSignal reach it)."""
    try:
        call = _spawn(request, cw.stream_request(await request.body()))
    except Exception as e:  # noqa: BLE001 - every failure ends the stream with its code
        return StreamingResponse(iter([cw.end_stream(connect_error(e))]),
                                 media_type=cw.STREAM_TYPE)
    return _streamed(ctx, oid, sb, call)


@envd_router.post("/process.Process/Connect")
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


@envd_router.post("/process.Process/{method}")
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
            sig = SIGNALS.get(msg.get("signal"))  # type: ignore[arg-type]
            if sig is None:
                raise cw.ConnectError("invalid_argument", "signal must be SIGKILL or SIGTERM")
            call = {"action": "signal", "signal": sig}
        elif method == "SendInput":
            given = msg.get("input") if isinstance(msg.get("input"), dict) else {}
            data = given.get("stdin", given.get("pty"))
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
        data = await ctx.io.get_file(sb.org_id, sb.sandbox_id, oid, {"path": sandbox_path(path)})
    except Exception as e:  # noqa: BLE001 - answered with its status
        return _http_error(e)
    return Response(data, media_type="application/octet-stream")


@envd_router.post("/files")
async def write_files(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox,
                      path: Annotated[str | None, Query(max_length=4096)] = None) -> Response:
    """A multipart form (each part's filename its path, or `?path=` for one)
    or a raw body for `?path=`."""
    try:
        body = await request.body()
        kind = request.headers.get("content-type", "")
        files = (_multipart(kind, body, path) if kind.startswith("multipart/form-data")
                 else [(path, body)] if path else [])
        if not files:
            raise cw.ConnectError("invalid_argument", "no file in the request")
        out = []
        for name, data in files:
            target = sandbox_path(name)

            async def read(data: bytes = data) -> bytes:
                return data
            await ctx.io.put_file(sb.org_id, sb.sandbox_id, oid, {"path": target}, read)
            out.append({"name": posixpath.basename(target), "type": "file", "path": target})
    except Exception as e:  # noqa: BLE001 - answered with its status
        return _http_error(e)
    return JSONResponse(out)


def _multipart(content_type: str, body: bytes, path: str | None) -> list[tuple[str, bytes]]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts: list[tuple[str, bytes]] = []
    for part in msg.iter_parts():
        name, data = part.get_filename() or path, part.get_payload(decode=True)
        if name:
            parts.append((name, data if isinstance(data, bytes) else b""))
    return [(path, parts[0][1])] if len(parts) == 1 and path else parts


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
