"""QemuDriver: the VmmDriver for QEMU microvm guests (KVM or TCG)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from services.host_agent.adapters.guest_image import ImagePaths, ensure_image
from services.host_agent.application.ports import (
    ExecChunk, ExecRequest, ExecResult, FileEntry, ReconcileReport, ResourceRecorder,
    SnapshotInfo, VmInfo, VmSpec,
)

from . import procs
from .accel import choose_accel
from .agent_client import AgentClient
from .cmdline import VmLayout, kernel_cmdline, qemu_argv
from .errors import AgentUnavailable, QmpError, VmBootTimeout, VmError, VmNotFound
from .qmp import QmpClient
from .templates import (
    OVERLAY, STATE, TEMPLATE_MAC, LaunchParams, Template, TemplateInvalid, TemplateStore,
    copy_file, key_inputs, read_manifest, template_key, validate_manifest, write_manifest,
)

log = logging.getLogger("corral.host_agent.qemu")
SANDBOX_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")
MAX_SOCKET_PATH = 107  # sun_path
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Resource kinds this driver records (value None = removed).
K_DIR, K_OVERLAY, K_QMP, K_AGENT, K_PID, K_TAP, K_LEASE = (
    "dir", "overlay", "qmp_socket", "agent_socket", "pid", "tap", "lease")
# Only recorded when they differ from the sandbox id (a VM adopted from the warm
# pool keeps its QEMU `-name` and its network lease's key).
K_VMNAME, K_NETID = "vm_name", "net_id"
VM_META = "vm.json"  # in the VM dir: vm_name, net_id, launch params
PoolClass = tuple[str, int, int]  # (image, vcpus, memory_mib)


class NetLeaseLike(Protocol):
    tap: str
    mac: str
    ip: str
    gateway: str
    prefix_len: int


class Network(Protocol):
    async def allocate(self, sandbox_id: str, egress: bool) -> NetLeaseLike: ...
    async def release(self, sandbox_id: str) -> None: ...
    async def reconcile(self, known: dict) -> dict: ...  # noqa: ANN001
    def lease_from_record(self, sandbox_id: str, value: str) -> NetLeaseLike: ...


def lease_record(lease: NetLeaseLike) -> str:
    """The whole lease as one durable value, so a restarted agent can rebuild it."""
    return "|".join((lease.tap, lease.mac, lease.ip, lease.gateway, str(lease.prefix_len),
                     "1" if getattr(lease, "egress", False) else "0"))


@dataclass
class _Vm:
    sandbox_id: str
    layout: VmLayout
    pid: int
    accel: str
    qmp: QmpClient | None = None
    agent: AgentClient | None = None
    proc: asyncio.subprocess.Process | None = None  # None when adopted
    ip: str | None = None
    launch: LaunchParams | None = None
    vm_name: str = ""  # QEMU -name suffix and original dir name; "" = sandbox_id
    net_id: str = ""   # key of the network lease; "" = sandbox_id
    mac: str | None = None

    def __post_init__(self) -> None:
        self.vm_name = self.vm_name or self.sandbox_id
        self.net_id = self.net_id or self.sandbox_id


@dataclass
class _PoolVm:
    cls: PoolClass
    vm: _Vm
    lease: NetLeaseLike | None
    template_key: str


@dataclass
class _PoolClassState:
    target: int
    ready: list[_PoolVm] = field(default_factory=list)
    filling: int = 0
    hits: int = 0
    misses: int = 0


class QemuDriver:
    def __init__(self, state_root: str | Path = ".corral/host/vms", *,
                 network: Network | None = None,
                 image_resolver: Callable[[str], ImagePaths] = ensure_image,
                 accel: str | None = None, boot_timeout_s: float | None = None) -> None:
        self.state_root = Path(state_root).resolve()
        self.network = network
        self._resolve_image = image_resolver
        self._forced_accel = accel
        self.accel = accel or "tcg"  # updated by the first probe
        self._boot_timeout = boot_timeout_s
        self._vms: dict[str, _Vm] = {}

    # -- helpers --------------------------------------------------------------
    def _layout(self, sandbox_id: str) -> VmLayout:
        if not SANDBOX_ID_RE.match(sandbox_id or ""):
            raise ValueError(f"invalid sandbox id {sandbox_id!r}")
        layout = VmLayout(self.state_root / sandbox_id)
        if len(str(layout.agent).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"state root too long for unix socket paths: {layout.agent}")
        return layout

    def _vm(self, sandbox_id: str) -> _Vm:
        vm = self._vms.get(sandbox_id)
        if vm is None:
            raise VmNotFound(sandbox_id)
        return vm

    def _agent(self, sandbox_id: str) -> AgentClient:
        vm = self._vm(sandbox_id)
        if vm.agent is None or vm.agent.closed:
            raise AgentUnavailable(f"no agent channel for {sandbox_id}")
        return vm.agent

    def boot_timeout(self, accel: str) -> float:
        if self._boot_timeout is not None:
            return self._boot_timeout
        return float(os.environ.get("CORRAL_BOOT_TIMEOUT", "30" if accel == "kvm" else "90"))

    async def _image(self, name: str) -> ImagePaths:
        return await asyncio.to_thread(self._resolve_image, name)

    async def _accel_for(self, img: ImagePaths) -> str:
        if self._forced_accel:
            return self._forced_accel
        self.accel = await choose_accel(img.kernel, img.initrd)
        return self.accel

    # -- lifecycle ------------------------------------------------------------
    async def start(self, spec: VmSpec, record: ResourceRecorder) -> VmInfo:
        t0 = time.monotonic()
        sid = spec.sandbox_id
        layout = self._layout(sid)
        if not (1 <= spec.vcpus <= 64) or not (64 <= spec.memory_mib <= 65536):
            raise ValueError("vcpus or memory_mib out of range")
        if sid in self._vms:
            raise VmError(f"{sid} is already running")
        img = await self._image(spec.image)
        accel = await self._accel_for(img)
        created: dict[str, str] = {}

        async def rec(kind: str, value: str | None) -> None:
            if value is None:
                created.pop(kind, None)
            else:
                created[kind] = value
            await record(sid, kind, value)

        vm: _Vm | None = None
        try:
            self.state_root.mkdir(parents=True, exist_ok=True)
            reuse = spec.reuse_disk and layout.overlay.exists()
            layout.dir.mkdir(mode=0o700, exist_ok=reuse)
            await rec(K_DIR, str(layout.dir))
            if reuse:  # a restart: same disk, fresh sockets
                layout.qmp.unlink(missing_ok=True)
                layout.agent.unlink(missing_ok=True)
            else:
                await _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                           "-b", str(img.rootfs), str(layout.overlay))
            await rec(K_OVERLAY, str(layout.overlay))
            lease = None
            if self.network is not None:
                await rec(K_LEASE, f"pending|{sid}")  # before it exists: a crash now leaves a key
                lease = await self.network.allocate(sid, spec.egress)
                await rec(K_TAP, lease.tap)
                await rec(K_LEASE, lease_record(lease))
            hostname = spec.name if spec.name and HOSTNAME_RE.match(spec.name) else None
            append = kernel_cmdline(accel, lease.ip if lease else None,
                                    lease.gateway if lease else None,
                                    lease.prefix_len if lease else None, hostname)
            argv = qemu_argv(sandbox_id=sid, layout=layout, kernel=img.kernel,
                             initrd=img.initrd, accel=accel, vcpus=spec.vcpus,
                             memory_mib=spec.memory_mib, append=append,
                             tap=lease.tap if lease else None, mac=lease.mac if lease else None)
            await rec(K_QMP, str(layout.qmp))
            await rec(K_AGENT, str(layout.agent))
            with open(layout.qemu_log, "wb") as logf:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                    start_new_session=True)
            vm = _Vm(sid, layout, proc.pid, accel, proc=proc,
                     ip=lease.ip if lease else None)
            self._vms[sid] = vm
            await rec(K_PID, str(proc.pid))
            await self._connect(vm, self.boot_timeout(accel))
            await vm.agent.configure(env=dict(spec.env), hostname=hostname)
        except BaseException as e:
            log.error("VM start failed; cleaning up",
                      extra={"sandbox_id": sid, "error": repr(e),
                             "console_tail": _tail(layout.console)})
            self._vms.pop(sid, None)
            await asyncio.shield(self._teardown(sid, layout, vm, created, rec))
            raise
        boot_ms = int((time.monotonic() - t0) * 1000)
        log.info("VM ready", extra={"sandbox_id": sid, "pid": vm.pid, "accel": accel,
                                    "boot_ms": boot_ms})
        return VmInfo(sid, vm.pid, accel, vm.ip, boot_ms)

    async def _connect(self, vm: _Vm, timeout: float) -> None:
        """QMP then agent hello, failing fast if QEMU exits."""
        exited = asyncio.ensure_future(procs.wait_exit(vm.pid, timeout + 5))

        async def connect() -> None:
            deadline = time.monotonic() + timeout
            while not vm.layout.qmp.exists():  # QEMU creates it early in start-up
                if exited.done() or time.monotonic() > deadline:
                    raise VmError("QMP socket never appeared")
                await asyncio.sleep(0.01)
            vm.qmp = await QmpClient.connect(str(vm.layout.qmp))
            vm.agent = await AgentClient.connect(str(vm.layout.agent))
            try:
                await vm.agent.handshake(max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                raise VmBootTimeout(f"guest agent not ready within {timeout:.0f}s") from None

        task = asyncio.ensure_future(connect())
        try:
            done, _ = await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                return
            raise VmError(f"qemu exited during boot: {_tail(vm.layout.qemu_log)}")
        finally:
            for t in (task, exited):
                if not t.done():
                    t.cancel()
            await asyncio.gather(task, exited, return_exceptions=True)

    async def _teardown(self, sid: str, layout: VmLayout, vm: _Vm | None,
                        resources: dict[str, str],
                        rec: Callable[[str, str | None], Awaitable[None]] | None) -> None:
        """Kill QEMU and remove every recorded object, in reverse order of creation."""
        resources = dict(resources)
        if vm is not None:
            for c in (vm.agent, vm.qmp):
                if c is not None:
                    await c.close()
        pid = int(resources[K_PID]) if resources.get(K_PID) else (vm.pid if vm else None)
        if pid:
            await procs.kill_verified(pid, sid, self.state_root)
            if vm is not None and vm.proc is not None:
                await vm.proc.wait()
        if rec and K_PID in resources:
            await rec(K_PID, None)
        for kind in (K_AGENT, K_QMP, K_OVERLAY):
            if kind in resources:
                Path(resources[kind]).unlink(missing_ok=True)
                if rec:
                    await rec(kind, None)
        if (K_TAP in resources or K_LEASE in resources) and self.network is not None:
            await self.network.release(sid)
            if rec:
                for kind in (K_TAP, K_LEASE):
                    if kind in resources:
                        await rec(kind, None)
        if layout.dir.exists():
            shutil.rmtree(layout.dir, ignore_errors=True)
        if rec and K_DIR in resources:
            await rec(K_DIR, None)

    async def stop(self, sandbox_id: str) -> None:
        """Power the VM off (QEMU exits); files stay until destroy."""
        vm = self._vms.pop(sandbox_id, None)
        if vm is None:
            return
        if vm.agent is not None:
            try:  # flush the guest's page cache so a restart finds its writes
                await vm.agent.exec(ExecRequest(["sync"], timeout_s=10))
            except Exception as e:  # noqa: BLE001 - power off all the same
                log.warning("sync before stop failed: %r", e, extra={"sandbox_id": sandbox_id})
            await vm.agent.close()
        if vm.qmp is not None:
            await vm.qmp.quit()
            await vm.qmp.close()
        if not await procs.wait_exit(vm.pid, 5.0):
            await procs.kill_verified(vm.pid, sandbox_id, self.state_root)
        if vm.proc is not None:
            await vm.proc.wait()

    async def destroy(self, sandbox_id: str, resources: dict[str, str]) -> None:
        layout = self._layout(sandbox_id)
        vm = self._vms.pop(sandbox_id, None)
        res = dict(resources)
        if vm is not None:
            res.setdefault(K_PID, str(vm.pid))
        await self._teardown(sandbox_id, layout, vm, res, None)

    async def pause(self, sandbox_id: str) -> None:
        qmp = self._vm(sandbox_id).qmp
        await qmp.execute("stop")
        if (s := await qmp.status()) != "paused":
            raise QmpError(f"expected paused, got {s}")

    async def resume(self, sandbox_id: str) -> None:
        qmp = self._vm(sandbox_id).qmp
        await qmp.execute("cont")
        if (s := await qmp.status()) != "running":
            raise QmpError(f"expected running, got {s}")

    async def status(self, sandbox_id: str) -> str:
        return await self._vm(sandbox_id).qmp.status()

    async def is_alive(self, sandbox_id: str, resources: dict[str, str]) -> bool:
        pid = resources.get(K_PID)
        if pid is None and sandbox_id in self._vms:
            pid = str(self._vms[sandbox_id].pid)
        return bool(pid) and procs.is_ours(int(pid), sandbox_id, self.state_root)

    # -- guest operations -------------------------------------------------------
    async def exec(self, sandbox_id: str, req: ExecRequest,
                   on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None
                   ) -> ExecResult:
        return await self._agent(sandbox_id).exec(req, on_chunk)

    async def put_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self._agent(sandbox_id).put_file(path, data)

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        return await self._agent(sandbox_id).get_file(path)

    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        return await self._agent(sandbox_id).list_files(path)

    # -- recovery ---------------------------------------------------------------
    async def reconcile(self, recorded: dict[str, dict[str, str]],
                        record: ResourceRecorder,
                        keep: dict[str, dict[str, str]] | None = None) -> ReconcileReport:
        adopted, cleaned, killed = [], [], []
        keep = keep or {}
        if self.network is not None:  # ports and rules first: only recorded leases stay
            known = {sid: self.network.lease_from_record(sid, res[K_LEASE])
                     for sid, res in {**keep, **recorded}.items()
                     if res.get(K_LEASE) and not res[K_LEASE].startswith("pending|")}
            await self.network.reconcile(known)
        running = procs.find_ours(self.state_root)
        for sid, res in recorded.items():
            layout = self._layout(sid)
            pid = int(res[K_PID]) if res.get(K_PID) else None
            rec = _bind(record, sid)
            if pid and procs.is_ours(pid, sid, self.state_root):
                vm = _Vm(sid, layout, pid, self.accel)
                try:
                    await self._connect(vm, self.boot_timeout(self.accel))
                    self._vms[sid] = vm
                    adopted.append(sid)
                    running.pop(sid, None)
                    continue
                except (VmError, OSError, QmpError) as e:
                    log.warning("adopt failed; cleaning", extra={"sandbox_id": sid,
                                                                 "error": repr(e)})
            await self._teardown(sid, layout, None, res, rec)
            running.pop(sid, None)
            cleaned.append(sid)
        for sid, pid in running.items():
            if sid in self._vms:
                continue
            await procs.kill_verified(pid, sid, self.state_root)
            await self._teardown(sid, self._layout(sid), None, {}, None)
            killed.append(sid)
        if self.state_root.is_dir():
            for d in self.state_root.iterdir():
                sid = d.name
                if (sid in self._vms or sid in recorded or sid in keep
                        or not SANDBOX_ID_RE.match(sid)):
                    continue
                shutil.rmtree(d, ignore_errors=True)
                if sid not in killed:
                    cleaned.append(sid)
        report = ReconcileReport(adopted, cleaned, killed)
        log.info("reconciled", extra={"adopted": adopted, "cleaned": cleaned,
                                      "killed_unrecorded": killed})
        return report

    async def close(self) -> None:
        """Drop channels; VMs keep running (a restarted agent adopts them)."""
        for vm in list(self._vms.values()):
            for c in (vm.agent, vm.qmp):
                if c is not None:
                    await c.close()
        self._vms.clear()


def _bind(record: ResourceRecorder, sid: str) -> Callable[[str, str | None], Awaitable[None]]:
    async def rec(kind: str, value: str | None) -> None:
        await record(sid, kind, value)
    return rec


async def _run(*argv: str) -> None:
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    if p.returncode != 0:
        raise VmError(f"{argv[0]} failed: {out.decode(errors='replace')[-500:]}")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
