"""Watching a directory in a sandbox as Server-Sent Events (docs/api-processes.md)."""
from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ..adapters.host_client import OutputLost, StreamTimeout
from .deps import Ctx, OpId, Org
from .envd_watch import lines
from .io_routes import SandboxId
from .sse import KEEPALIVE_S, error_event, event, idle_ticks

watch_router = APIRouter(tags=["sandboxes"])


@watch_router.get("/v1/sandboxes/{sandbox_id}/files/watch", response_class=StreamingResponse,
                  responses={200: {"content": {"text/event-stream": {"schema": {
                      "type": "string"}}}, "description": "start, then fs events "
                      "{name, op}, then end {reason}; see docs/api-processes.md"}})
async def watch_files(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                      path: Annotated[str, Query(min_length=1, max_length=4096,
                                                 pattern=r"^/[^\x00]*$")],
                      recursive: bool = False,
                      timeout_s: Annotated[float, Query(gt=0, le=86400)] = 3600
                      ) -> StreamingResponse:
    """Events under a directory (create, write, remove, rename, chmod; names
    relative to it) until `timeout_s`, or until the directory goes."""
    chunks = await ctx.io.proc_stream(org.org_id, sandbox_id, oid, {
        "action": "watch", "path": path, "recursive": recursive, "stream_s": timeout_s})
    return StreamingResponse(_events(chunks, oid), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _events(chunks: Any, oid: str) -> AsyncIterator[bytes]:
    ticks = idle_ticks(chunks, KEEPALIVE_S)
    try:
        async for chunk in ticks:
            if chunk is None:
                yield b": keepalive\n\n"
            elif chunk.stream == "start":
                yield event("start", {"id": chunk.pid})
            elif chunk.stream == "events" and chunk.data_b64:
                for e in lines(base64.b64decode(chunk.data_b64)):
                    yield event("fs", dict(e))
            elif chunk.stream == "exit":
                yield event("end", {"reason": "the directory is gone"})
            elif chunk.error is not None and chunk.error.error == "timeout":
                yield event("end", {"reason": "timeout"})
            else:
                err = chunk.error
                yield error_event(err.error if err else "internal",
                                  err.detail if err else "the watch failed", oid)
    except (StreamTimeout, OutputLost) as e:
        yield error_event("output_lost", f"the watch was lost: {e}", oid)
    finally:
        await ticks.aclose()
        await chunks.aclose()

