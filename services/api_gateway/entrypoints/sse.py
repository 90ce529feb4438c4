"""Relays a host agent's exec chunks as Server-Sent Events (docs/api-streaming.md)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from nats.aio.client import Client

from common.rpc import request as rpc
from contracts.rpc import Done, HostExecChunk, HostExecStream

from .problems import TITLES

ERROR_STATUS = {"not_found": 404, "invalid": 422, "conflict": 409, "too_large": 413}


def event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def error_event(code: str, detail: str, op_id: str) -> bytes:
    status = ERROR_STATUS.get(code, 502)
    return event("error", {"type": f"https://corral.dev/problems/{code}",
                           "title": TITLES.get(status, "Error"), "status": status,
                           "detail": detail, "op_id": op_id})


async def stream_exec(nc: Client, subject: str, req: HostExecStream,
                      op_id: str) -> AsyncIterator[bytes]:
    """Subscribe first, then ask; raises RpcFailure before any byte is sent."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=4096)

    async def on_chunk(msg) -> None:  # noqa: ANN001
        try:
            queue.put_nowait(msg.data)
        except asyncio.QueueFull:  # a stuck client: drop, the result still flags truncation
            pass

    sub = await nc.subscribe(req.chunks_to, cb=on_chunk)
    try:
        await rpc(nc, subject, req, Done, timeout=15)
    except BaseException:
        await sub.unsubscribe()
        raise
    deadline = time.monotonic() + req.timeout_s + 30

    async def gen() -> AsyncIterator[bytes]:
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    raw = await asyncio.wait_for(queue.get(), max(remaining, 0.01))
                except asyncio.TimeoutError:
                    yield error_event("timeout", "no result from the host in time", op_id)
                    return
                chunk = HostExecChunk.model_validate_json(raw)
                if chunk.stream in ("stdout", "stderr"):
                    yield event(chunk.stream, {"data": chunk.data})
                elif chunk.stream == "exit" and chunk.result is not None:
                    r = chunk.result
                    yield event("exit", {"exit_code": r.exit_code, "duration_ms": r.duration_ms,
                                         "timed_out": r.timed_out, "truncated": r.truncated})
                    return
                else:
                    err = chunk.error
                    yield error_event(err.error if err else "internal",
                                      err.detail if err else "stream failed", op_id)
                    return
        finally:
            await sub.unsubscribe()
    return gen()
