"""What the gateway's use cases need from its adapters."""
from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any, Protocol

from contracts.rpc import (HostExec, HostExecChunk, HostExecResult, HostExecStream, HostFileData,
                           HostFileEntries, HostFileGet, HostFileList, HostFileOp,
                           HostFileOpResult, HostFilePut)

from contracts.procs import HostProc, HostProcResult

Page = tuple[list[dict[str, Any]], str | None]


class Listing(Protocol):
    """The read model: one org's sandboxes and snapshots, keyset-paginated."""

    async def catch_up(self, ledger: Any, batch: int = 200) -> int: ...

    async def list_sandboxes(self, org_id: str, limit: int, cursor: str | None,
                             state: str | None, name: str | None) -> Page: ...

    async def list_snapshots(self, org_id: str, limit: int, cursor: str | None) -> Page: ...


class Hosts(Protocol):
    """A host agent's exec and file calls."""

    async def exec(self, host_id: str, req: HostExec) -> HostExecResult: ...
    async def exec_stream(self, host_id: str, req: HostExecStream
                          ) -> AsyncGenerator[HostExecChunk, None]: ...
    async def put_file(self, host_id: str, req: HostFilePut) -> None: ...
    async def get_file(self, host_id: str, req: HostFileGet) -> HostFileData: ...
    async def list_files(self, host_id: str, req: HostFileList) -> HostFileEntries: ...
    async def file_op(self, host_id: str, req: HostFileOp) -> HostFileOpResult: ...
    async def proc(self, host_id: str, req: HostProc) -> HostProcResult: ...
    async def proc_stream(self, host_id: str, req: HostProc
                          ) -> AsyncGenerator[HostExecChunk, None]: ...


class Secrets(Protocol):
    """Seals env values for the gateway's own store; digests create bodies."""

    def seal(self, values: dict[str, str]) -> str: ...
    def open(self, sealed: str) -> dict[str, str]: ...
    def digest(self, canonical: bytes) -> str: ...
    def access_token(self, org_id: str, sandbox_id: str) -> str: ...
    def token_org(self, token: str, sandbox_id: str) -> str | None: ...


class EventSource(Protocol):
    """The durable stream of sandbox facts, followed from a position."""

    def follow(self, subjects: list[str], after: int | None, since: datetime | None,
               idle_s: float) -> AsyncIterator[tuple[int, str, bytes] | None]:
        """(stream sequence, subject, body) in order; None after `idle_s` idle."""
        ...
