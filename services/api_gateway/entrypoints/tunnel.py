"""A TCP connection to a port inside a sandbox: the host agent's `connect`
stream (the guest agent connects to its own loopback, so nothing outside the
guest is ever reached), bytes in by `input` calls, bytes out as the stream."""
from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any

from common.rpc import RpcFailure
from contracts.procs import MAX_INPUT
from contracts.rpc import HostExecChunk

from ..adapters.host_client import OutputLost, StreamTimeout

LIFETIME_S = 3600.0  # a connection's longest life (the guest closes it then)


class TunnelError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class Tunnel:
    def __init__(self, io: Any, org_id: str, sandbox_id: str, op_id: str, port: int) -> None:
        self.io, self.org_id, self.sandbox_id, self.op_id = io, org_id, sandbox_id, op_id
        self.port = port
        self.pid = 0
        self._chunks: AsyncGenerator[HostExecChunk, None] | None = None
        self.ended = False

    async def open(self, first: bytes) -> None:
        """Connect and send `first`; TunnelError if nothing listens."""
        try:
            self._chunks = await self.io.proc_stream(self.org_id, self.sandbox_id, self.op_id, {
                "action": "connect", "port": self.port, "timeout_s": LIFETIME_S,
                "stream_s": LIFETIME_S,
                "data_b64": base64.b64encode(first[:MAX_INPUT]).decode()})
            start = await self._next()
        except RpcFailure as e:
            raise TunnelError(e.code, e.detail) from None
        if start is None or start.stream != "start" or start.pid is None:
            raise TunnelError("unreachable", "the connection ended before it began")
        self.pid = start.pid
        if len(first) > MAX_INPUT:
            await self.send(first[MAX_INPUT:])

    async def _next(self) -> HostExecChunk | None:
        assert self._chunks is not None
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except (StreamTimeout, OutputLost) as e:
            raise TunnelError("unreachable", f"the connection broke: {e}") from None
        if chunk.stream == "error":
            err = chunk.error
            raise TunnelError(err.error if err else "internal",
                              err.detail if err else "the connection failed")
        return chunk

    async def recv(self) -> bytes:
        """The next bytes from the port; b"" once it closed."""
        while not self.ended:
            chunk = await self._next()
            if chunk is None or chunk.stream == "exit":
                self.ended = True
            elif chunk.data_b64:
                return base64.b64decode(chunk.data_b64)
        return b""

    async def send(self, data: bytes, eof: bool = False) -> None:
        for at in range(0, max(len(data), 1), MAX_INPUT):
            piece = data[at:at + MAX_INPUT]
            last = at + MAX_INPUT >= len(data)
            try:
                await self.io.proc(self.org_id, self.sandbox_id, self.op_id, {
                    "action": "input", "pid": self.pid, "eof": eof and last,
                    "data_b64": base64.b64encode(piece).decode()})
            except RpcFailure as e:
                raise TunnelError(e.code, e.detail) from None

    async def close(self) -> None:
        """Leaving the stream ends the connection in the guest."""
        if self._chunks is not None:
            await self._chunks.aclose()
