"""The privileged helper's server (root): the host agent's privileged steps,
on request, for one peer uid only.

    python -m services.host_agent helper      (settings from CORRAL_* as the agent's)

Every request is typed and checked here before anything is done: VM names
and uids in their ranges, disk paths inside the VMs' state root, binds that
are files or VM directories, only QEMU executed, only our TAPs opened. What
the agent asks for can never be more than what it could do itself as root
for its own VMs; it can never be done to anything else on the host.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.logging import configure_logging
from common.service import install_stop_handlers

from ..adapters.helper import wire
from ..adapters.jail.cgroups import Limits
from ..adapters.jail.privileged import LocalPrivileged, VmSpawn
from ..adapters.network.host_network import HostNetwork, NetLease
from ..adapters.network.ipam import IFNAME_RE
from ..adapters.network.policy import control_plane_addresses
from ..adapters.qemu.driver import local_privileged
from ..settings import HostAgentSettings, cidr_list

log = logging.getLogger("corral.host_agent.helper")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
Answer = tuple[Any, list[int]]  # a result, and fds to send with it
Op = Callable[[dict[str, Any], list[int]], Awaitable[Answer]]


@dataclass
class Helper:
    priv: LocalPrivileged
    network: HostNetwork | None
    state_root: Path

    def _disk(self, path: str) -> Path:
        p = Path(path).resolve()
        if not p.is_relative_to(self.state_root) or p.name != "disk" or not p.is_dir():
            raise ValueError(f"{path}: not a VM disk directory")
        return p

    def _net(self) -> HostNetwork:
        if self.network is None:
            raise ValueError("this host has no sandbox network")
        return self.network

    def ops(self) -> dict[str, Op]:
        return {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")}

    async def op_open_tap(self, a: dict, _fds: list[int]) -> Answer:
        name = str(a["name"])
        if not IFNAME_RE.match(name) or not name.startswith(("tap", "crt")):
            raise ValueError(f"{name!r} is not one of our TAPs")
        return None, [await self.priv.open_tap(name)]

    async def op_prepare_disk(self, a: dict, _fds: list[int]) -> Answer:
        await self.priv.prepare_disk(self._disk(a["disk"]), int(a["uid"]))
        return None, []

    async def op_spawn_vm(self, a: dict, fds: list[int]) -> Answer:
        r = dict(a["req"])
        if not Path(r["state_root"]).resolve().is_relative_to(self.state_root):
            raise ValueError("spawns are for this host's state root only")
        for path, rw in r["binds"]:
            if rw:
                self._disk(path)
            elif not Path(path).is_file():
                raise ValueError(f"{path}: read-only binds are files")
        limits = Limits(**r["limits"]) if r.get("limits") else None
        req = VmSpawn(**{**r, "vm": _name(r["vm"]), "limits": limits,
                         "binds": [(str(p), bool(rw)) for p, rw in r["binds"]]})
        return await self.priv.spawn_vm(req, fds), []

    async def op_kill_vm(self, a: dict, _fds: list[int]) -> Answer:
        return await self.priv.kill_vm(int(a["pid"]), _name(a["vm"]), self.state_root,
                                       float(a.get("term_timeout", 3.0))), []

    async def op_release_vm(self, a: dict, _fds: list[int]) -> Answer:
        await self.priv.release_vm(_name(a["vm"]))
        return None, []

    async def op_cgroup_stats(self, a: dict, _fds: list[int]) -> Answer:
        return await self.priv.stats(_name(a["vm"])), []

    async def op_forget_others(self, a: dict, _fds: list[int]) -> Answer:
        return await self.priv.forget_others({_name(v) for v in a["live"]}), []

    async def op_net_setup(self, a: dict, _fds: list[int]) -> Answer:
        await self._net().setup()
        return None, []

    async def op_net_teardown(self, a: dict, _fds: list[int]) -> Answer:
        await self._net().teardown()
        return None, []

    async def op_net_allocate(self, a: dict, _fds: list[int]) -> Answer:
        lease = await self._net().allocate(_name(a["sandbox_id"]), bool(a["egress"]))
        return lease.__dict__, []

    async def op_net_release(self, a: dict, _fds: list[int]) -> Answer:
        await self._net().release(_name(a["sandbox_id"]))
        return None, []

    async def op_net_set_egress(self, a: dict, _fds: list[int]) -> Answer:
        lease = await self._net().set_egress(_name(a["sandbox_id"]), bool(a["on"]))
        return lease.__dict__, []

    async def op_net_reconcile(self, a: dict, _fds: list[int]) -> Answer:
        known = {_name(k): NetLease(**{**dict(v), "sandbox_id": _name(k)})
                 for k, v in dict(a["known"]).items()}
        return await self._net().reconcile(known), []


def _name(value: object) -> str:
    name = str(value)
    if not NAME_RE.match(name):
        raise ValueError(f"bad name {name[:80]!r}")
    return name


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


async def serve_connection(conn: socket.socket, ops: dict[str, Op], agent_uid: int) -> None:
    if peer_uid(conn) != agent_uid:
        log.warning("refused a helper connection from uid %d", peer_uid(conn))
        conn.close()
        return
    try:
        while True:
            doc, fds = await wire.recv(conn)
            if doc is None:
                return
            try:
                op = ops[str(doc.get("op"))]
                result, out = await op(dict(doc.get("args") or {}), fds)
                await wire.send(conn, {"result": result}, out)
                for fd in out:
                    os.close(fd)
            except Exception as e:  # noqa: BLE001 - every request is answered, typed
                log.warning("helper refused %s: %r", doc.get("op"), e)
                await wire.send(conn, {"error": {"kind": e.__class__.__name__,
                                                 "message": str(e)[:1000]}})
            finally:
                for fd in fds:
                    os.close(fd)
    except (ConnectionError, ValueError) as e:
        log.warning("helper connection dropped: %r", e)
    finally:
        conn.close()


async def serve_helper(settings: HostAgentSettings, socket_path: Path, agent_uid: int,
                       stop: asyncio.Event) -> None:
    """Serve `agent_uid` on `socket_path` until `stop`."""
    state_root = settings.state_dir.resolve()  # every VM dir of the agent is below it
    state_root.mkdir(parents=True, exist_ok=True)
    network = None
    if settings.network:
        deny = cidr_list(settings.egress_deny) + await asyncio.to_thread(
            control_plane_addresses, settings.nats_url, settings.store)
        network = HostNetwork(settings.bridge, settings.subnet, tap_uid=agent_uid,
                              egress_deny=deny, egress_allow=cidr_list(settings.egress_allow))
    helper = Helper(local_privileged(state_root / "vms", agent_uid), network, state_root)
    ops = helper.ops()
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(socket_path))
    os.chown(socket_path, agent_uid, -1)
    os.chmod(socket_path, 0o600)
    server.listen(16)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    log.info("privileged helper serving %s for uid %d", socket_path, agent_uid)
    try:
        while not stop.is_set():
            accept = asyncio.ensure_future(loop.sock_accept(server))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({accept, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not accept.done():
                accept.cancel()
                break
            conn, _ = accept.result()
            conn.setblocking(False)
            t = asyncio.ensure_future(serve_connection(conn, ops, agent_uid))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        helper.priv.close()


async def run_helper(settings: HostAgentSettings) -> None:
    """The helper as a process: until SIGTERM or SIGINT."""
    configure_logging("host_helper", settings.log_level)
    if settings.helper_socket is None or settings.agent_uid is None:
        raise SystemExit("CORRAL_HELPER_SOCKET and CORRAL_AGENT_UID are required")
    stop = asyncio.Event()
    install_stop_handlers(stop)
    await serve_helper(settings, settings.helper_socket, settings.agent_uid, stop)
