"""Commands and files inside a running sandbox, relayed to its host agent."""
from __future__ import annotations

import asyncio
import posixpath
import stat
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from contracts.rpc import (HostExec, HostExecChunk, HostExecResult, HostExecStream, HostFileEntries,
                           HostFileList, HostFileOp, HostFileOpResult)

from contracts.procs import HostProc, HostProcResult

from .errors import Conflict
from .ledger import SandboxLedger
from .op_limits import OpLimits, holding
from .ports import Hosts

PathArg = dict[str, str]  # {"path": ...} or {"path_b64": ...}


class GuestIO:
    """Each call holds one of the org's exec or files slots (OpLimits) while
    it runs; a streamed exec holds its slot until the stream ends."""

    def __init__(self, ledger: SandboxLedger, hosts: Hosts, limits: OpLimits) -> None:
        self.ledger = ledger
        self.hosts = hosts
        self.limits = limits

    async def host_of(self, sandbox_id: str, org_id: str) -> str:
        """The host of the caller's sandbox, which must be running."""
        sb = await asyncio.to_thread(self.ledger.find, sandbox_id, org_id)
        if sb.state != "running" or not sb.host_id:
            raise Conflict(f"sandbox is {sb.state}, not running")
        return sb.host_id

    async def exec(self, org_id: str, sandbox_id: str, op_id: str,
                   command: dict[str, Any]) -> HostExecResult:
        """`command`: cmd, env, cwd, timeout_s, stdin."""
        with self.limits.acquire(org_id, "exec"):
            host = await self.host_of(sandbox_id, org_id)
            return await self.hosts.exec(host, HostExec(sandbox_id=sandbox_id, org_id=org_id,
                                                        op_id=op_id, **command))

    async def _stream(self, org_id: str, sandbox_id: str,
                      open_: Callable[[str], Awaitable[AsyncGenerator[HostExecChunk, None]]]
                      ) -> AsyncGenerator[HostExecChunk, None]:
        """A stream from the sandbox's host, holding an `exec` slot until it ends."""
        slot = self.limits.acquire(org_id, "exec")
        try:
            chunks = await open_(await self.host_of(sandbox_id, org_id))
        except BaseException:
            slot.release()
            raise
        return holding(slot, chunks)

    async def exec_stream(self, org_id: str, sandbox_id: str, op_id: str,
                          command: dict[str, Any]) -> AsyncGenerator[HostExecChunk, None]:
        return await self._stream(org_id, sandbox_id, lambda host: self.hosts.exec_stream(
            host, HostExecStream(sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, **command)))

    async def proc(self, org_id: str, sandbox_id: str, op_id: str,
                   call: dict[str, Any]) -> HostProcResult:
        """A background process call (HostProc's fields): spawn without its
        output, input, signal, resize, ps."""
        with self.limits.acquire(org_id, "exec"):
            host = await self.host_of(sandbox_id, org_id)
            return await self.hosts.proc(host, HostProc(sandbox_id=sandbox_id, org_id=org_id,
                                                        op_id=op_id, **call))

    async def proc_stream(self, org_id: str, sandbox_id: str, op_id: str,
                          call: dict[str, Any]) -> AsyncGenerator[HostExecChunk, None]:
        """spawn or attach: start, output, exit; closing it early detaches."""
        return await self._stream(org_id, sandbox_id, lambda host: self.hosts.proc_stream(
            host, HostProc(sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, **call)))

    async def list_files(self, org_id: str, sandbox_id: str, op_id: str,
                         path: PathArg) -> HostFileEntries:
        with self.limits.acquire(org_id, "files"):
            host = await self.host_of(sandbox_id, org_id)
            return await self.hosts.list_files(host, HostFileList(
                sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, **path))

    async def list_tree(self, org_id: str, sandbox_id: str, op_id: str, path: str,
                        depth: int, limit: int = 10000) -> HostFileEntries:
        """Entries `depth` levels down (1: the directory itself), breadth first,
        names relative to `path`; symlinks are not followed, and a directory
        whose name is not UTF-8 is listed but not entered. `truncated` once
        `limit` entries are reached or a directory was cut."""
        out: list = []
        truncated = False
        queue = [("", path, 1)]
        while queue:
            rel, where, level = queue.pop(0)
            listing = await self.list_files(org_id, sandbox_id, op_id, {"path": where})
            truncated = truncated or listing.truncated
            for e in listing.entries:
                if len(out) >= limit:
                    return HostFileEntries(entries=out, truncated=True)
                if rel and e.name_b64 is not None:  # no relative path can carry it
                    truncated = True
                    continue
                out.append(e.model_copy(update={"name": rel + e.name}) if rel else e)
                if (level < depth and e.is_dir and not stat.S_ISLNK(e.mode)
                        and e.name_b64 is None):
                    queue.append((f"{rel}{e.name}/", posixpath.join(where, e.name), level + 1))
        return HostFileEntries(entries=out, truncated=truncated)

    async def file_op(self, org_id: str, sandbox_id: str, op_id: str, path: PathArg,
                      action: str, **options: Any) -> HostFileOpResult:
        """stat, mkdir (parents), remove (recursive), rename (to / to_b64)."""
        with self.limits.acquire(org_id, "files"):
            host = await self.host_of(sandbox_id, org_id)
            return await self.hosts.file_op(host, HostFileOp(
                sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, action=action, **path,
                **options))
