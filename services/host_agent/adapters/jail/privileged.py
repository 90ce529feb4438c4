"""The privileged steps of running a VM, behind one narrow, typed interface:
give a VM's disk to its uid, start its QEMU in a jail inside a cgroup with
limits, signal it, remove its cgroup. `LocalPrivileged` does them itself
(the agent runs as root); `helper.client.HelperClient` asks the privileged
helper process to (the agent does not)."""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..network.tap import open_tap
from .. import procs
from .cgroups import Cgroups, Limits
from .spec import BASE_DEVICES, KVM_DEVICE, JailSpec
from .zygote import Zygote

log = logging.getLogger("corral.host_agent.jail")
UID_RANGE = (3_000_000, 65_536)  # uids (and gids) handed to VMs: nobody else's


@dataclass(frozen=True)
class VmSpawn:
    """One jailed QEMU: who it runs as, what it sees, what it may use."""
    vm: str
    uid: int
    argv: list[str]
    state_root: str  # the agent's VM directories (only `binds` below are visible)
    binds: list[tuple[str, bool]] = field(default_factory=list)
    kvm: bool = False
    limits: Limits | None = None
    fd_targets: list[int] = field(default_factory=list)
    log_index: int | None = None


class Privileged(Protocol):
    async def open_tap(self, name: str) -> int: ...
    async def prepare_disk(self, disk: Path, uid: int) -> None: ...
    async def spawn_vm(self, req: VmSpawn, fds: list[int]) -> int: ...
    async def kill_vm(self, pid: int, vm: str, state_root: Path,
                      term_timeout: float = 3.0) -> bool: ...
    async def release_vm(self, vm: str) -> None: ...
    async def stats(self, vm: str) -> dict[str, int]: ...
    async def forget_others(self, live: set[str]) -> list[str]: ...
    def close(self) -> None: ...


def check_uid(uid: int) -> None:
    base, count = UID_RANGE
    if not base <= uid < base + count:
        raise ValueError(f"uid {uid} is not a VM uid")


class LocalPrivileged:
    """For an agent that is root itself. `cgroups` None: no cgroup support here
    (the VMs still run jailed; the agent logs that limits are off)."""

    def __init__(self, jail_mountpoint: Path, cgroups: Cgroups | None,
                 agent_uid: int | None = None) -> None:
        self.mountpoint = jail_mountpoint
        self.cgroups = cgroups
        self.agent_uid = os.getuid() if agent_uid is None else agent_uid
        self.zygote = Zygote()

    async def open_tap(self, name: str) -> int:
        return await asyncio.to_thread(open_tap, name)

    async def prepare_disk(self, disk: Path, uid: int) -> None:
        """The VM's disk dir and files: owned by the agent, group the VM's gid."""
        check_uid(uid)
        await asyncio.to_thread(_give_disk, disk, self.agent_uid, uid)

    async def spawn_vm(self, req: VmSpawn, fds: list[int]) -> int:
        check_uid(req.uid)
        if not req.argv or not req.argv[0].endswith("qemu-system-x86_64"):
            raise ValueError("only QEMU is started in a VM jail")
        for path, rw in req.binds:
            inside = Path(path).resolve().is_relative_to(Path(req.state_root).resolve())
            if rw and not inside:
                raise ValueError(f"{path}: writable binds must be VM directories")
        procs_files: list[str] = []
        if self.cgroups is not None and req.limits is not None:
            procs_files = await asyncio.to_thread(self.cgroups.create, req.vm, req.limits)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        spec = JailSpec(req.vm, req.uid, req.uid, str(self.mountpoint), req.argv,
                        binds=list(req.binds),
                        devices=list(BASE_DEVICES) + ([KVM_DEVICE] if req.kvm else []),
                        cgroup_procs=procs_files, fd_targets=list(req.fd_targets),
                        log_index=req.log_index)
        try:
            return await self.zygote.spawn(spec, fds)
        except BaseException:
            await self.release_vm(req.vm)
            raise

    async def kill_vm(self, pid: int, vm: str, state_root: Path,
                      term_timeout: float = 3.0) -> bool:
        """SIGTERM, then SIGKILL, `pid` if it is still VM `vm`'s QEMU (a VM uid,
        named so): never any other process. True once it is gone."""
        return await procs.kill_if(pid, lambda p: _is_vm(p, vm), term_timeout)

    async def release_vm(self, vm: str) -> None:
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove, vm)

    async def stats(self, vm: str) -> dict[str, int]:
        """Its cgroup's limits, peak memory and OOM kills ({} without cgroups)."""
        if self.cgroups is None:
            return {}
        return await asyncio.to_thread(self.cgroups.stats, vm)

    async def forget_others(self, live: set[str]) -> list[str]:
        """Remove the cgroups of VMs that are not live (after a crash)."""
        if self.cgroups is None:
            return []
        stale = sorted(await asyncio.to_thread(self.cgroups.names) - live)
        for vm in stale:
            await self.release_vm(vm)
        return stale

    def close(self) -> None:
        self.zygote.close()


def _is_vm(pid: int, vm: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    uid = next((int(line.split()[1]) for line in status.splitlines()
                if line.startswith("Uid:")), -1)
    base, count = UID_RANGE
    return base <= uid < base + count and f"corral-{vm}".encode() in argv


def _give_disk(disk: Path, owner: int, gid: int) -> None:
    """Owner: the agent (it copies the disk for snapshots); group: the VM's
    gid, so its QEMU may read and write it, and no other VM may."""
    os.chown(disk, owner, gid)
    os.chmod(disk, 0o2770)
    for f in disk.iterdir():
        if f.is_file() and not f.is_symlink():
            os.chown(f, owner, gid)
            os.chmod(f, 0o660)
