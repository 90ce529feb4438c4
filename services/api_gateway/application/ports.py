"""What the gateway's use cases need from its adapters."""
from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from contracts.rpc import (HostExec, HostExecChunk, HostExecResult, HostExecStream, HostFileData,
                           HostFileEntries, HostFileGet, HostFileList, HostFilePut)

Page = tuple[list[dict[str, Any]], str | None]


class Listing(Protocol):
    """The read model: one org's sandboxes and snapshots, keyset-paginated."""

    async def list_sandboxes(self, org_id: str, limit: int, cursor: str | None,
                             state: str | None, name: str | None) -> Page: ...

    async def list_snapshots(self, org_id: str, limit: int, cursor: str | None) -> Page: ...


class Hosts(Protocol):
    """A host agent's exec and file calls."""

    def new_inbox(self) -> str: ...
    async def exec(self, host_id: str, req: HostExec) -> HostExecResult: ...
    async def exec_stream(self, host_id: str, req: HostExecStream
                          ) -> AsyncGenerator[HostExecChunk, None]: ...
    async def put_file(self, host_id: str, req: HostFilePut) -> None: ...
    async def get_file(self, host_id: str, req: HostFileGet) -> HostFileData: ...
    async def list_files(self, host_id: str, req: HostFileList) -> HostFileEntries: ...
