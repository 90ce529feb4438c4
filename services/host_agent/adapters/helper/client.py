"""The agent's side of the privileged helper: the same interfaces as
`LocalPrivileged` and `HostNetwork`, each call a request on the helper's
socket (a few connections, so concurrent starts do not queue behind one)."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from ..jail.privileged import VmSpawn
from ..network.host_network import NetLease, lease_from_record
from . import wire

POOL = 4


class HelperClient:
    def __init__(self, path: Path, pool: int = POOL) -> None:
        self.path = path
        self._idle: asyncio.Queue[socket.socket] = asyncio.Queue()
        self._made = 0
        self._pool = pool

    async def _conn(self) -> socket.socket:
        if self._idle.empty() and self._made < self._pool:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, str(self.path))
            self._made += 1
            return s
        return await self._idle.get()

    async def call(self, op: str, args: dict[str, Any] | None = None,
                   fds: list[int] | None = None) -> tuple[Any, list[int]]:
        conn = await self._conn()
        ok = False
        try:
            await wire.send(conn, {"op": op, "args": args or {}}, fds)
            doc, got = await wire.recv(conn)
            if doc is None:
                raise ConnectionError("the privileged helper went away")
            ok = True
        finally:
            if ok:
                self._idle.put_nowait(conn)
            else:
                conn.close()
                self._made -= 1
        if "error" in doc:
            for fd in got:
                os.close(fd)
            err = doc["error"]
            raise wire.HelperError(str(err.get("kind")), str(err.get("message")))
        return doc.get("result"), got

    # -- Privileged -----------------------------------------------------------------
    async def open_tap(self, name: str) -> int:
        _, fds = await self.call("open_tap", {"name": name})
        if len(fds) != 1:
            raise wire.HelperError("ProtocolError", "open_tap answered without one fd")
        return fds[0]

    async def prepare_disk(self, disk: Path, uid: int) -> None:
        await self.call("prepare_disk", {"disk": str(disk), "uid": uid})

    async def spawn_vm(self, req: VmSpawn, fds: list[int]) -> int:
        result, _ = await self.call("spawn_vm", {"req": dataclasses.asdict(req)}, fds)
        return int(result)

    async def kill_vm(self, pid: int, vm: str, state_root: Path,
                      term_timeout: float = 3.0) -> bool:
        result, _ = await self.call("kill_vm", {"pid": pid, "vm": vm,
                                                "term_timeout": term_timeout})
        return bool(result)

    async def release_vm(self, vm: str) -> None:
        await self.call("release_vm", {"vm": vm})

    async def stats(self, vm: str) -> dict[str, int]:
        result, _ = await self.call("cgroup_stats", {"vm": vm})
        return {str(k): int(v) for k, v in dict(result).items()}

    async def forget_others(self, live: set[str]) -> list[str]:
        result, _ = await self.call("forget_others", {"live": sorted(live)})
        return [str(x) for x in result]

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


class HelperNetwork:
    """HostNetwork's interface, served by the helper (which owns the bridge)."""

    def __init__(self, client: HelperClient) -> None:
        self.client = client

    async def setup(self) -> None:
        await self.client.call("net_setup")

    async def teardown(self) -> None:
        await self.client.call("net_teardown")

    async def allocate(self, sandbox_id: str, egress: bool = False) -> NetLease:
        result, _ = await self.client.call("net_allocate", {"sandbox_id": sandbox_id,
                                                            "egress": egress})
        return NetLease(**result)

    async def release(self, sandbox_id: str) -> None:
        await self.client.call("net_release", {"sandbox_id": sandbox_id})

    async def set_egress(self, sandbox_id: str, on: bool) -> NetLease:
        result, _ = await self.client.call("net_set_egress", {"sandbox_id": sandbox_id,
                                                              "on": on})
        return NetLease(**result)

    async def reconcile(self, known: dict[str, Any]) -> dict[str, list[str]]:
        leases = {k: dataclasses.asdict(v) for k, v in known.items()}
        result, _ = await self.client.call("net_reconcile", {"known": leases})
        return {str(k): [str(x) for x in v] for k, v in dict(result).items()}

    def lease_from_record(self, sandbox_id: str, value: str) -> NetLease:
        return lease_from_record(sandbox_id, value)
