"""A host agent's exec chunks as Server-Sent Events (docs/api-streaming.md)."""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from contracts.rpc import HostExecChunk

from ..adapters.host_client import OutputLost, StreamTimeout
from .problems import RPC_STATUS, TITLES


def event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def error_event(code: str, detail: str, op_id: str) -> bytes:
    status = RPC_STATUS.get(code, 502)
    return event("error", {"type": f"https://corral.dev/problems/{code}",
                           "title": TITLES.get(status, "Error"), "status": status,
                           "detail": detail, "op_id": op_id})


T = TypeVar("T")
KEEPALIVE_S = 15.0  # under the idle timeouts of common proxies (30-60 s)


async def idle_ticks(source: AsyncIterator[T], every_s: float = KEEPALIVE_S
                     ) -> AsyncGenerator[T | None, None]:
    """`source`'s items, and None after every `every_s` without one."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None:  # stop reading `source` before anyone closes it
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def exec_events(chunks: AsyncGenerator[HostExecChunk, None], op_id: str,
                      keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
    """stdout/stderr events, then one exit (or error) event; a `: keepalive`
    comment while the command is silent."""
    ticks = idle_ticks(chunks, keepalive_s)
    try:
        async for chunk in ticks:
            if chunk is None:
                yield b": keepalive\n\n"
            elif chunk.stream == "start":
                yield event("start", {"pid": chunk.pid})
            elif chunk.stream in ("stdout", "stderr", "pty"):
                yield event(chunk.stream, {"data": chunk.data} if chunk.data_b64 is None
                            else {"data_b64": chunk.data_b64})
            elif chunk.stream == "exit" and chunk.result is not None:
                r = chunk.result
                yield event("exit", {"exit_code": r.exit_code, "duration_ms": r.duration_ms,
                                     "timed_out": r.timed_out, "truncated": r.truncated})
            else:
                err = chunk.error
                yield error_event(err.error if err else "internal",
                                  err.detail if err else "stream failed", op_id)
    except StreamTimeout:
        yield error_event("timeout", "no result from the host in time", op_id)
    except OutputLost as e:
        yield error_event("output_lost", f"the client read too slowly and output was "
                          f"dropped ({e}); read faster or use a non-streamed exec", op_id)
    finally:
        await ticks.aclose()
        await chunks.aclose()  # unsubscribes from the chunk inbox
