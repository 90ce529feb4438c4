"""A host agent's exec and file calls over request/reply on its own subject;
streamed exec output arrives on an inbox of ours."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from nats.aio.msg import Msg

from common.rpc import RpcClient
from contracts.rpc import (Done, HostExec, HostExecChunk, HostExecResult, HostExecStream,
                           HostFileData, HostFileEntries, HostFileGet, HostFileList, HostFilePut)
from contracts.subjects import host_rpc_subject

MAX_REPLY = 12 << 20
STREAM_QUEUE = 4096  # chunks held for a slow reader; beyond, dropped (flagged truncated)


class StreamTimeout(Exception):
    """The host sent no result before the exec's deadline."""


class HostClient(RpcClient):
    async def exec(self, host_id: str, req: HostExec) -> HostExecResult:
        return await self.call(host_rpc_subject(host_id, "exec"), req, HostExecResult,
                               timeout=req.timeout_s + 15, max_bytes=MAX_REPLY)

    async def exec_stream(self, host_id: str, req: HostExecStream
                          ) -> AsyncGenerator[HostExecChunk, None]:
        """Subscribe first, then ask; raises RpcFailure before any chunk arrives.
        The iterator ends after an exit or error chunk, or raises StreamTimeout."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=STREAM_QUEUE)

        async def on_chunk(msg: Msg) -> None:
            try:
                queue.put_nowait(msg.data)
            except asyncio.QueueFull:  # a stuck client: drop, the result still flags truncation
                pass

        sub = await self.nc.subscribe(req.chunks_to, cb=on_chunk)
        try:
            await self.call(host_rpc_subject(host_id, "exec.stream"), req, Done, timeout=15)
        except BaseException:
            await sub.unsubscribe()
            raise
        deadline = time.monotonic() + req.timeout_s + 30

        async def chunks() -> AsyncGenerator[HostExecChunk, None]:
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    try:
                        raw = await asyncio.wait_for(queue.get(), max(remaining, 0.01))
                    except TimeoutError:
                        raise StreamTimeout() from None
                    chunk = HostExecChunk.model_validate_json(raw)
                    yield chunk
                    if chunk.stream not in ("stdout", "stderr"):
                        return
            finally:
                await sub.unsubscribe()
        return chunks()

    def new_inbox(self) -> str:
        return self.nc.new_inbox()

    async def put_file(self, host_id: str, req: HostFilePut) -> None:
        await self.call(host_rpc_subject(host_id, "files.put"), req, Done, timeout=60)

    async def get_file(self, host_id: str, req: HostFileGet) -> HostFileData:
        return await self.call(host_rpc_subject(host_id, "files.get"), req, HostFileData,
                               timeout=60, max_bytes=MAX_REPLY)

    async def list_files(self, host_id: str, req: HostFileList) -> HostFileEntries:
        return await self.call(host_rpc_subject(host_id, "files.list"), req, HostFileEntries,
                               timeout=30, max_bytes=MAX_REPLY)
