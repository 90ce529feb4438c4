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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from services.host_agent.adapters.guest_image import ImagePaths
from services.host_agent.application.ports import VmInfo, VmSpec

from . import procs
from .accel import choose_accel
from .agent_client import AgentClient
from .cmdline import MemFile, VmLayout, qemu_argv
from .errors import AgentUnavailable, VmBootTimeout, VmError, VmNotFound
from .migration import load_state
from .qmp import QmpClient
from .templates import LaunchParams
from .vm import (K_AGENT, K_DIR, K_LEASE, K_NETID, K_OVERLAY, K_PID, K_QMP, K_TAP, K_VMNAME,
                 MAX_SOCKET_PATH, SANDBOX_ID_RE, NetLeaseLike, Network, Vm, guest_hostname,
                 net_identity, write_meta)

log = logging.getLogger("corral.host_agent.qemu")
T = TypeVar("T")
Rec = Callable[[str, str | None], Awaitable[None]]


class Launcher:
    def __init__(self, state_root: Path, network: Network | None,
                 image_resolver: Callable[[str], ImagePaths], accel: str | None,
                 boot_timeout_s: float | None, restore_timeout_s: float | None) -> None:
        self.state_root = state_root
        self.network = network
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
    def argv(self, vm_name: str, layout: VmLayout, launch: LaunchParams, tap: str | None,
             mem: MemFile | None = None) -> list[str]:
        return qemu_argv(sandbox_id=vm_name, layout=layout, kernel=Path(launch.kernel),
                         initrd=Path(launch.initrd), accel=launch.accel, vcpus=launch.vcpus,
                         memory_mib=launch.memory_mib, append=launch.append,
                         tap=tap if launch.net else None, mac=launch.mac if launch.net else None,
                         mem=mem)

    def argv_shape(self, launch: LaunchParams) -> list[str]:
        """The argv with per-VM names and paths as placeholders (for the template key).
        RAM's backing (anonymous or a file) does not change the device model."""
        return self.argv("VM", VmLayout(Path("/VMDIR")), launch, "TAP")

    async def spawn(self, argv: list[str], layout: VmLayout) -> asyncio.subprocess.Process:
        with open(layout.qemu_log, "wb") as logf:
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True)

    # -- connect and hand-off ---------------------------------------------------
    async def connect(self, vm: Vm, timeout: float, incoming: bool = False,
                      state: Path | None = None, ignore_shared: bool = False,
                      resumed: bool = False) -> None:
        """QMP then agent hello, or for an incoming migration the load of `state`
        (see `load_state`); fails fast if QEMU exits meanwhile."""
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
                await load_state(qmp, state, ignore_shared, resumed, deadline)
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
        await qmp.execute("cont")
        t_cont = time.monotonic()
        # hello + configure in one write (one round trip): the guest answers the
        # versioned hello first, then applies the identity.
        try:
            _hello, conf = await agent.handshake_configure(
                self.restore_timeout(), env=dict(spec.env), hostname=guest_hostname(spec),
                entropy=os.urandom(256), time_ns=time.time_ns(), net=net_identity(lease))
        except TimeoutError:
            if agent.hello is None:
                raise VmBootTimeout("restored guest agent did not answer hello") from None
            raise
        vm.pending = False
        await asyncio.to_thread(write_meta, vm)
        log.info("identity handed off", extra={
            "sandbox_id": vm.sandbox_id, "handoff_ms": int((time.monotonic() - t0) * 1000),
            "cont_ms": int((t_cont - t0) * 1000), "guest_ms": conf.get("ms")})

    def ready(self, vm: Vm, mode: str, t0: float, source: str | None) -> VmInfo:
        boot_ms = int((time.monotonic() - t0) * 1000)
        log.info("VM ready", extra={"sandbox_id": vm.sandbox_id, "pid": vm.pid,
                                    "accel": vm.accel, "boot_ms": boot_ms,
                                    "start_mode": mode, "source": source})
        return VmInfo(vm.sandbox_id, vm.pid, vm.accel, vm.ip, boot_ms, mode, vm.mac, source)

    # -- teardown ----------------------------------------------------------------
    async def teardown(self, sid: str, layout: VmLayout, vm: Vm | None,
                       resources: dict[str, str], rec: Rec | None) -> None:
        """Kill QEMU and remove every recorded object, in reverse order of creation."""
        resources = dict(resources)
        vm_name = resources.get(K_VMNAME) or (vm.vm_name if vm else sid)
        if vm is not None:
            await vm.close_channels()
        pid = int(resources[K_PID]) if resources.get(K_PID) else (vm.pid if vm else None)
        if pid:
            await procs.kill_verified(pid, vm_name, self.state_root)
            if vm is not None and vm.proc is not None:
                await vm.proc.wait()
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
            await vm.close_channels()
            await procs.kill_verified(vm.pid, vm.vm_name, self.state_root, term_timeout=1.0)
            if vm.proc is not None:
                await vm.proc.wait()
        shutil.rmtree(layout.dir, ignore_errors=True)


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
