"""A host agent's exec and file calls over request/reply on its own subject.
Streamed exec output follows the answer on the same reply inbox; bodies
larger than a bus message (files, big outputs) travel in parts."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator
from typing import Any

from common.rpc import RpcClient, RpcFailure, Stream, open_stream
from contracts.procs import HostProc, HostProcResult
from contracts.rpc import (Done, HostExec, HostExecChunk, HostExecResult, HostExecStream,
                           HostFileData, HostFileEntries, HostFileGet, HostFileList, HostFileOp,
                           HostFileOpResult, HostFilePut)
from contracts.subjects import host_rpc_subject

MAX_REPLY = 12 << 20
MAX_CHUNK = 1 << 20
STREAM_PENDING = 8 << 20  # bytes held for a slow reader; beyond, chunks are dropped


class StreamTimeout(Exception):
    """The host sent no result before the exec's deadline."""


class OutputLost(Exception):
    """Chunks were dropped (the reader fell more than STREAM_PENDING behind)."""


class HostClient(RpcClient):
    async def exec(self, host_id: str, req: HostExec) -> HostExecResult:
        return await self.call(host_rpc_subject(host_id, "exec"), req, HostExecResult,
                               timeout=req.timeout_s + 15, max_bytes=MAX_REPLY)

    async def _accepted(self, subject: str, req: Any) -> Stream:
        """A stream request, once the host answered `Done` (RpcFailure if not)."""
        stream = await open_stream(self.nc, subject, req, timeout=15, max_bytes=64 << 10,
                                   pending_bytes=STREAM_PENDING)
        try:
            await stream.answer(Done)
        except BaseException:
            await stream.close()
            raise
        return stream

    async def exec_stream(self, host_id: str, req: HostExecStream
                          ) -> AsyncGenerator[HostExecChunk, None]:
        """Raises RpcFailure before any chunk arrives if the host refuses. The
        iterator ends after an exit or error chunk, or raises StreamTimeout."""
        stream = await self._accepted(host_rpc_subject(host_id, "exec.stream"), req)
        return _chunks(stream, time.monotonic() + req.timeout_s + 30)

    async def proc(self, host_id: str, req: HostProc) -> HostProcResult:
        return await self.call(host_rpc_subject(host_id, "proc"), req, HostProcResult,
                               timeout=30, max_bytes=MAX_REPLY)

    async def proc_stream(self, host_id: str, req: HostProc
                          ) -> AsyncGenerator[HostExecChunk, None]:
        """A process's start, output and end (spawn or attach). Closing the
        iterator early detaches: the process runs on."""
        req = req.model_copy(update={"stream_id": secrets.token_urlsafe(24)})
        stream = await self._accepted(host_rpc_subject(host_id, "proc.stream"), req)

        async def detach() -> None:
            try:
                await self.proc(host_id, HostProc(sandbox_id=req.sandbox_id, org_id=req.org_id,
                                                  op_id=req.op_id, action="detach",
                                                  stream_id=req.stream_id))
            except RpcFailure:
                pass  # the stream's own time bounds it anyway
        return _chunks(stream, time.monotonic() + req.stream_s + 30, detach)

    async def put_file(self, host_id: str, req: HostFilePut) -> None:
        await self.call(host_rpc_subject(host_id, "files.put"), req, Done, timeout=60)

    async def get_file(self, host_id: str, req: HostFileGet) -> HostFileData:
        return await self.call(host_rpc_subject(host_id, "files.get"), req, HostFileData,
                               timeout=60, max_bytes=MAX_REPLY)

    async def list_files(self, host_id: str, req: HostFileList) -> HostFileEntries:
        return await self.call(host_rpc_subject(host_id, "files.list"), req, HostFileEntries,
                               timeout=30, max_bytes=MAX_REPLY)

    async def file_op(self, host_id: str, req: HostFileOp) -> HostFileOpResult:
        return await self.call(host_rpc_subject(host_id, "files.op"), req, HostFileOpResult,
                               timeout=150 if req.action == "remove" else 45)


async def _chunks(stream: Stream, deadline: float, abandon: Any = None
                  ) -> AsyncGenerator[HostExecChunk, None]:
    """The messages after the answer, numbered from 0, until an end; `abandon`
    runs if the reader stops first."""
    expected = 0
    ended = False
    try:
        while True:
            try:
                raw = await stream.next(deadline, MAX_CHUNK)
            except TimeoutError:
                raise StreamTimeout() from None
            chunk = HostExecChunk.model_validate_json(raw)
            if chunk.seq != expected:
                raise OutputLost(f"chunk {chunk.seq} came after {expected - 1}")
            expected += 1
            ended = chunk.stream in ("exit", "error")
            yield chunk
            if ended:
                return
    finally:
        await stream.close()
        if not ended and abandon is not None:
            await asyncio.shield(abandon())
