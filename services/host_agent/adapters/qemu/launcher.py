"""The QEMU process of one VM: command line, spawn, connect (QMP and guest
agent, or an incoming migration), identity hand-off and teardown.

Holds the table of running sandboxes and the names of internal (template
and warm-pool) VMs; every start path and the reconcile go through it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from services.host_agent.adapters.guest_image import ImagePaths
from services.host_agent.application.ports import VmInfo, VmSpec

from ..jail.cgroups import Limits, device_of
from ..jail.privileged import Privileged, VmSpawn
from ..jail.spec import FdPlan
from .. import procs
from .accel import choose_accel
from .agent_client import AgentClient
from .cmdline import TCG_TB_MIB, Fds, MemFile, VmLayout, qemu_argv
from .errors import AgentUnavailable, VmBootTimeout, VmError, VmNotFound
from .memory import TemplateMemory
from .migration import load_state
from .qcow2 import backing_file
from .qmp import QmpClient
from .templates import LaunchParams
from .uids import UidPool
from .vm import (K_AGENT, K_DIR, K_LEASE, K_NETID, K_OVERLAY, K_PID, K_QMP, K_TAP, K_VMNAME,
                 MAX_SOCKET_PATH, SANDBOX_ID_RE, NetLeaseLike, Network, Vm, guest_hostname,
                 net_identity, write_meta)

log = logging.getLogger("corral.host_agent.qemu")
T = TypeVar("T")
REAP_TIMEOUT_S = 15.0
Rec = Callable[[str, str | None], Awaitable[None]]


@dataclass(frozen=True)
class Started:
    pid: int
    uid: int
    state_fd: int | None  # the fd number QEMU reads an incoming migration from


@dataclass(frozen=True)
class VmAllowance:
    """Memory a VM's QEMU may use beyond guest RAM (measured: docs/security.md),
    and its other limits."""
    tcg_mib: int = TCG_TB_MIB + 96  # measured: ~124 MiB over guest RAM at 256 MiB
    kvm_mib: int = 96
    pids: int = 128
    io_bps: int = 256 << 20
    io_iops: int = 8000


class Launcher:
    def __init__(self, state_root: Path, network: Network | None,
                 image_resolver: Callable[[str], ImagePaths], accel: str | None,
                 boot_timeout_s: float | None, restore_timeout_s: float | None,
                 privileged: Privileged, allowance: VmAllowance | None = None) -> None:
        self.state_root = state_root
        self.network = network
        self.priv = privileged
        self.allowance = allowance or VmAllowance()
        self.uids = UidPool()
        self.memory = TemplateMemory()
        self._resolve_image = image_resolver
        self._forced_accel = accel
        self.accel = accel or "tcg"  # updated by the first probe
        self._boot_timeout = boot_timeout_s
        self._restore_timeout = restore_timeout_s
        self.vms: dict[str, Vm] = {}  # running sandboxes
        self.internal: set[str] = set()  # vm names of template/pool VMs alive here

    # -- lookups and settings ---------------------------------------------------
    def layout(self, sandbox_id: str) -> VmLayout:
        if not SANDBOX_ID_RE.match(sandbox_id or ""):
            raise ValueError(f"invalid sandbox id {sandbox_id!r}")
        layout = VmLayout(self.state_root / sandbox_id)
        if len(str(layout.agent).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"state root too long for unix socket paths: {layout.agent}")
        return layout

    def vm(self, sandbox_id: str) -> Vm:
        vm = self.vms.get(sandbox_id)
        if vm is None:
            raise VmNotFound(sandbox_id)
        return vm

    def qmp(self, sandbox_id: str) -> QmpClient:
        qmp = self.vm(sandbox_id).qmp
        if qmp is None:
            raise VmError(f"no QMP channel for {sandbox_id}")
        return qmp

    def agent(self, sandbox_id: str) -> AgentClient:
        vm = self.vm(sandbox_id)
        if vm.agent is None or vm.agent.closed:
            raise AgentUnavailable(f"no agent channel for {sandbox_id}")
        return vm.agent

    def boot_timeout(self, accel: str) -> float:
        if self._boot_timeout is not None:
            return self._boot_timeout
        return float(os.environ.get("CORRAL_BOOT_TIMEOUT", "30" if accel == "kvm" else "90"))

    def restore_timeout(self) -> float:
        if self._restore_timeout is not None:
            return self._restore_timeout
        return float(os.environ.get("CORRAL_RESTORE_TIMEOUT", "20"))

    async def image(self, name: str) -> ImagePaths:
        return await asyncio.to_thread(self._resolve_image, name)

    async def accel_for(self, img: ImagePaths) -> str:
        if self._forced_accel:
            return self._forced_accel
        self.accel = await choose_accel(img.kernel, img.initrd)
        return self.accel

    def is_alive(self, sandbox_id: str, resources: dict[str, str]) -> bool:
        pid = resources.get(K_PID)
        vm = self.vms.get(sandbox_id)
        if pid is None and vm is not None:
            pid = str(vm.pid)
        name = resources.get(K_VMNAME) or (vm.vm_name if vm else sandbox_id)
        return bool(pid) and procs.is_ours(int(pid or 0), name, self.state_root)

    # -- command line and process --------------------------------------------
    def argv(self, vm_name: str, layout: VmLayout, launch: LaunchParams, fds: Fds,
             mem: MemFile | None = None) -> list[str]:
        return qemu_argv(sandbox_id=vm_name, layout=layout, kernel=Path(launch.kernel),
                         initrd=Path(launch.initrd), accel=launch.accel, vcpus=launch.vcpus,
                         memory_mib=launch.memory_mib, append=launch.append, fds=fds,
                         mac=launch.mac if launch.net else None, mem=mem)

    def argv_shape(self, launch: LaunchParams) -> list[str]:
        """The argv with per-VM names, paths and fd numbers as placeholders (for
        the template key). RAM's backing does not change the device model."""
        return self.argv("VM", VmLayout(Path("/VMDIR")), launch, Fds.placeholders(launch.net))

    def limits(self, launch: LaunchParams) -> Limits:
        a = self.allowance
        extra = a.kvm_mib if launch.accel == "kvm" else a.tcg_mib
        return Limits(memory_bytes=(launch.memory_mib + extra) << 20,
                      cpus=launch.vcpus + 0.5, pids=a.pids, io_device=self._io_device(),
                      io_bps=a.io_bps, io_iops=a.io_iops)

    def _io_device(self) -> str | None:
        try:
            return device_of(self.state_root)
        except OSError:
            return None

    @staticmethod
    def make_dirs(layout: VmLayout, reuse: bool = False) -> None:
        """The VM's directory (the agent's) and its disk dir (QEMU's view)."""
        layout.dir.mkdir(mode=0o700, exist_ok=reuse)
        layout.disk.mkdir(mode=0o700, exist_ok=reuse)

    async def console_tail(self, vm: Vm | None) -> str:
        """The guest console's last output (best effort: QEMU may be gone)."""
        if vm is None or vm.qmp is None:
            return ""
        try:
            return await vm.qmp.ring()
        except Exception:  # noqa: BLE001 - diagnostics only
            return ""

    async def start_qemu(self, vm_name: str, layout: VmLayout, launch: LaunchParams,
                         tap: str | None, mem: MemFile | None = None,
                         state: Path | None = None) -> Started:
        """QEMU for one VM, in its jail and cgroup, as its own uid: its sockets,
        TAP, RAM and incoming state are descriptors opened here (QEMU itself
        sees nothing of the host but the image and its disk)."""
        uid = self.uids.allocate(vm_name)
        plan, ours = FdPlan(), []
        try:
            for path in (layout.qmp, layout.agent):
                path.unlink(missing_ok=True)
            qmp_sock, agent_sock = _listen(layout.qmp), _listen(layout.agent)
            ours += [qmp_sock.detach(), agent_sock.detach()]
            tap_fd = await self.priv.open_tap(tap) if tap and launch.net else None
            state_fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC) if state else None
            ours += [fd for fd in (tap_fd, state_fd) if fd is not None]
            fds = Fds(qmp=plan.add(ours[0]), agent=plan.add(ours[1]),
                      tap=plan.add(tap_fd) if tap_fd is not None else None,
                      mem=plan.add(mem.fd) if mem is not None else None,
                      state=plan.add(state_fd) if state_fd is not None else None)
            log_fd = os.open(layout.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             0o600)
            ours.append(log_fd)
            plan.log(log_fd)
            await self.priv.prepare_disk(layout.disk, uid)
            pid = await self.priv.spawn_vm(VmSpawn(
                vm_name, uid, self.argv(vm_name, layout, launch, fds, mem), str(self.state_root),
                binds=[*((f, False) for f in await asyncio.to_thread(_image_files, launch, layout)),
                       (str(layout.disk), True)],
                kvm=launch.accel == "kvm", limits=self.limits(launch),
                fd_targets=plan.targets, log_index=plan.log_index), plan.fds)
        except BaseException:
            self.uids.release(vm_name)
            raise
        finally:
            for fd in ours:
                os.close(fd)
        return Started(pid, uid, fds.state)

    # -- connect and hand-off ---------------------------------------------------
    async def connect(self, vm: Vm, timeout: float, incoming: bool = False,
                      state_fd: int | None = None, ignore_shared: bool = False,
                      resumed: bool = False) -> None:
        """QMP then agent hello, or for an incoming migration the load of the
        state QEMU holds on fd `state_fd` (see `load_state`); fails fast if QEMU
        exits meanwhile."""
        exited = asyncio.ensure_future(procs.wait_exit(vm.pid, timeout + 5))

        async def connect() -> None:
            deadline = time.monotonic() + timeout
            # QEMU creates the sockets early in start-up; between bind() and
            # listen() a connect is refused (seen with 10 boots at once).
            vm.qmp = qmp = await _when_listening(
                lambda: QmpClient.connect(str(vm.layout.qmp)), exited, deadline, "QMP")
            vm.agent = agent = await _when_listening(
                lambda: AgentClient.connect(str(vm.layout.agent)), exited, deadline, "agent")
            if incoming:
                await load_state(qmp, state_fd, ignore_shared, resumed, deadline)
                return
            try:
                await agent.handshake(max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                raise VmBootTimeout(f"guest agent not ready within {timeout:.0f}s") from None

        task = asyncio.ensure_future(connect())
        try:
            done, _ = await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                return
            raise VmError(f"qemu exited during boot: {tail(vm.layout.qemu_log)}")
        finally:
            for t in (task, exited):
                if not t.done():
                    t.cancel()
            await asyncio.gather(task, exited, return_exceptions=True)

    async def activate(self, vm: Vm, spec: VmSpec, lease: NetLeaseLike | None) -> None:
        """Run a restored (paused) guest and hand it its identity before anyone uses
        it. `lease` None: no NIC, or (warm pool) eth0 got the lease at fill time."""
        t0 = time.monotonic()
        qmp, agent = vm.control
        image = vm.launch.image if vm.launch is not None else spec.image
        defaults = (await self.image(image)).exec_defaults(dict(spec.env))
        await qmp.execute("cont")
        t_cont = time.monotonic()
        # hello + configure in one write (one round trip): the guest answers the
        # versioned hello first, then applies the identity.
        try:
            _hello, conf = await agent.handshake_configure(
                self.restore_timeout(), hostname=guest_hostname(spec), entropy=os.urandom(256),
                time_ns=time.time_ns(), net=net_identity(lease), **defaults)
        except TimeoutError:
            if agent.hello is None:
                raise VmBootTimeout("restored guest agent did not answer hello") from None
            raise
        vm.pending = False
        await asyncio.to_thread(write_meta, vm)
        log.info("identity handed off", extra={
            "sandbox_id": vm.sandbox_id, "stage": "handoff",
            "handoff_ms": int((time.monotonic() - t0) * 1000),
            "cont_ms": int((t_cont - t0) * 1000), "guest_ms": conf.get("ms")})

    def ready(self, vm: Vm, mode: str, t0: float, source: str | None) -> VmInfo:
        boot_ms = int((time.monotonic() - t0) * 1000)
        log.info("VM ready", extra={"sandbox_id": vm.sandbox_id, "pid": vm.pid,
                                    "stage": "ready",
                                    "accel": vm.accel, "boot_ms": boot_ms,
                                    "start_mode": mode, "source": source})
        return VmInfo(vm.sandbox_id, vm.pid, vm.accel, vm.ip, boot_ms, mode, vm.mac, source)

    # -- teardown ----------------------------------------------------------------
    async def reap(self, vm: Vm) -> None:
        """Wait until the VM's QEMU is gone (it was killed or quit)."""
        if vm.pid > 0 and not await procs.wait_exit(vm.pid, REAP_TIMEOUT_S):
            raise VmError(f"qemu {vm.pid} did not exit")

    async def teardown(self, sid: str, layout: VmLayout, vm: Vm | None,
                       resources: dict[str, str], rec: Rec | None) -> None:
        """Kill QEMU first (the guest gets no say), then drop the channels and
        remove every recorded object, in reverse order of creation."""
        resources = dict(resources)
        vm_name = resources.get(K_VMNAME) or (vm.vm_name if vm else sid)
        pid = int(resources[K_PID]) if resources.get(K_PID) else (vm.pid if vm else None)
        if pid:
            await self.priv.kill_vm(pid, vm_name, self.state_root)
        if vm is not None:
            await self.reap(vm)
            await vm.close_channels()
        await self.release(vm_name)
        await _forget(rec, resources, (K_PID,))
        for kind in (K_AGENT, K_QMP, K_OVERLAY):
            if kind in resources:
                Path(resources[kind]).unlink(missing_ok=True)
                await _forget(rec, resources, (kind,))
        if (K_TAP in resources or K_LEASE in resources) and self.network is not None:
            await self.network.release(resources.get(K_NETID) or (vm.net_id if vm else sid))
            await _forget(rec, resources, (K_TAP, K_LEASE))
        for d in {layout.dir, self.state_root / vm_name}:
            if d.exists() and SANDBOX_ID_RE.match(d.name):
                shutil.rmtree(d, ignore_errors=True)
        await _forget(rec, resources, (K_VMNAME, K_NETID, K_DIR))

    async def discard(self, vm: Vm | None, layout: VmLayout) -> None:
        """Kill an internal (template or pool) VM and remove its directory."""
        if vm is not None:
            await self.priv.kill_vm(vm.pid, vm.vm_name, self.state_root, term_timeout=1.0)
            await self.reap(vm)
            await vm.close_channels()
            await self.release(vm.vm_name)
        shutil.rmtree(layout.dir, ignore_errors=True)

    async def release(self, vm_name: str) -> None:
        """What the VM held beyond its files: its cgroup and its uid."""
        await self.priv.release_vm(vm_name)
        self.uids.release(vm_name)


async def _forget(rec: Rec | None, resources: dict[str, str], kinds: tuple[str, ...]) -> None:
    if rec is not None:
        for kind in kinds:
            if kind in resources:
                await rec(kind, None)


async def _when_listening(connect: Callable[[], Awaitable[T]], exited: asyncio.Future,
                          deadline: float, what: str) -> T:
    while True:
        try:
            return await connect()
        except (FileNotFoundError, ConnectionRefusedError):
            if exited.done() or time.monotonic() > deadline:
                raise VmError(f"{what} socket never accepted a connection") from None
            await asyncio.sleep(0.002)


def _image_files(launch: LaunchParams, layout: VmLayout) -> list[str]:
    """The kernel, the initrd and the disk's backing image: each bound alone,
    read-only, at its own path (the directories around them stay unseen)."""
    files = [launch.kernel, launch.initrd]
    if (backing := backing_file(layout.overlay)) is not None:
        files.append(str(Path(layout.disk, backing)))
    return sorted({str(Path(f).resolve()) for f in files})


def _listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        os.chmod(path, 0o600)
        s.listen(4)
    except BaseException:
        s.close()
        raise
    return s


async def run_tool(*argv: str) -> None:
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    if p.returncode != 0:
        raise VmError(f"{argv[0]} failed: {out.decode(errors='replace')[-500:]}")


async def new_overlay(img: ImagePaths, overlay: Path) -> None:
    await run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                   "-b", str(img.rootfs), str(overlay))


def tail(path: Path, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
