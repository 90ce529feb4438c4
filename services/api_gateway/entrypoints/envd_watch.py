"""envd's directory watchers: `WatchDir` (a stream) and the polled
`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` (what the sync SDK
uses), over the guest's inotify watches; a watcher id is the watch's id in
the guest, so any gateway instance serves it."""
from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..adapters.host_client import OutputLost, StreamTimeout
from . import connect_wire as cw
from .deps import Ctx, OpId
from .envd_common import RPC_CODES, Sandbox, connect_error, sandbox_path
from .sse import KEEPALIVE_S, idle_ticks

watch_router = APIRouter()
POLLED_S = 3600.0  # a polled watcher nobody removes ends after this


def fs_event(e: Any) -> dict[str, str]:
    return {"name": e["name"], "type": f"EVENT_TYPE_{e['op'].upper()}"}


def lines(data: bytes) -> list[dict[str, str]]:
    """A guest's JSON-lines events, each checked (others skipped)."""
    out = []
    for line in data.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if (isinstance(e, dict) and isinstance(e.get("name"), str)
                and e.get("op") in ("create", "write", "remove", "rename", "chmod")):
            out.append({"name": e["name"][:4096], "op": e["op"]})
    return out


def _watch(msg: dict[str, Any]) -> dict[str, Any]:
    return {"action": "watch", "path": sandbox_path(msg.get("path")),
            "recursive": bool(msg.get("recursive"))}


def _watcher(msg: dict[str, Any]) -> int:
    wid = msg.get("watcherId", msg.get("watcher_id"))
    if not isinstance(wid, str) or not wid.isdigit() or len(wid) > 12:
        raise cw.ConnectError("invalid_argument", "watcherId is required")
    return int(wid)


@watch_router.post("/filesystem.Filesystem/WatchDir")
async def watch_dir(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        error: cw.ConnectError | None = None
        try:
            call = _watch(cw.stream_request(await request.body()))
            chunks = await ctx.io.proc_stream(sb.org_id, sb.sandbox_id, oid, call)
        except Exception as e:  # noqa: BLE001 - every failure ends the stream with its code
            yield cw.end_stream(connect_error(e))
            return
        ticks = idle_ticks(chunks, KEEPALIVE_S)
        try:
            async for chunk in ticks:
                if chunk is None:
                    yield cw.envelope({"keepalive": {}})
                elif chunk.stream == "start":
                    yield cw.envelope({"start": {}})
                elif chunk.stream == "events" and chunk.data_b64:
                    for ev in lines(base64.b64decode(chunk.data_b64)):
                        yield cw.envelope({"filesystem": fs_event(ev)})
                elif chunk.stream == "error" and chunk.error:
                    error = cw.ConnectError(RPC_CODES.get(chunk.error.error, "unavailable"),
                                            chunk.error.detail)
        except (StreamTimeout, OutputLost) as e:
            error = cw.ConnectError("unavailable", f"the watch was lost: {e}")
        finally:
            await ticks.aclose()
            await chunks.aclose()
        yield cw.end_stream(error)
    return StreamingResponse(events(), media_type=cw.STREAM_TYPE)


async def _answered(request: Request, work: Callable[[dict[str, Any]], Awaitable[dict]]
                    ) -> JSONResponse:
    """A unary call: its message to `work`, whose dict is the answer; every
    failure answered with its Connect code."""
    try:
        return JSONResponse(await work(cw.unary_request(await request.body())))
    except Exception as e:  # noqa: BLE001 - every failure is answered with its code
        return cw.unary_error(connect_error(e))


@watch_router.post("/filesystem.Filesystem/CreateWatcher")
async def create_watcher(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> JSONResponse:
    async def work(msg: dict[str, Any]) -> dict:
        call = {**_watch(msg), "timeout_s": POLLED_S}
        res = await ctx.io.proc(sb.org_id, sb.sandbox_id, oid, call)
        return {"watcherId": str(res.pid)}
    return await _answered(request, work)


@watch_router.post("/filesystem.Filesystem/GetWatcherEvents")
async def watcher_events(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> JSONResponse:
    async def work(msg: dict[str, Any]) -> dict:
        res = await ctx.io.proc(sb.org_id, sb.sandbox_id, oid,
                                {"action": "poll", "pid": _watcher(msg)})
        return {"events": [fs_event(e.model_dump()) for e in res.events or []]}
    return await _answered(request, work)


@watch_router.post("/filesystem.Filesystem/RemoveWatcher")
async def remove_watcher(request: Request, ctx: Ctx, oid: OpId, sb: Sandbox) -> JSONResponse:
    async def work(msg: dict[str, Any]) -> dict:
        await ctx.io.proc(sb.org_id, sb.sandbox_id, oid,
                          {"action": "close", "pid": _watcher(msg)})
        return {}
    return await _answered(request, work)
