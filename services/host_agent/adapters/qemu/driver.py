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
from .cmdline import MemFile, VmLayout, kernel_cmdline, qemu_argv
from .errors import AgentUnavailable, QmpError, VmBootTimeout, VmError, VmNotFound
from .qmp import QmpClient
from .templates import (
    MEMORY, OVERLAY, STATE, TEMPLATE_MAC, LaunchParams, Template, TemplateStore,
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
WARM_CMDS = (("true",), ("sh", "-c", ":"), ("ls", "/"), ("python3", "-c", "pass"))


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
    pending: bool = False  # restored, identity not yet handed off
    hostname: str | None = None
    incoming: dict | None = None  # while pending: {"state", "ignore_shared"}

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
                 accel: str | None = None, boot_timeout_s: float | None = None,
                 template_root: str | Path | None = None, templates: bool = True,
                 warm_pool: dict[PoolClass, int] | None = None,
                 restore_timeout_s: float | None = None,
                 build_retry_s: float = 300.0) -> None:
        """`templates`: restore creates from snapshot templates (built in the
        background after the first cold boot of a class). `warm_pool`:
        {(image, vcpus, memory_mib): n} restored-but-unassigned VMs kept paused."""
        self.state_root = Path(state_root).resolve()
        self.network = network
        self._resolve_image = image_resolver
        self._forced_accel = accel
        self.accel = accel or "tcg"  # updated by the first probe
        self._boot_timeout = boot_timeout_s
        self._restore_timeout = restore_timeout_s
        self._vms: dict[str, _Vm] = {}
        self.templates_enabled = templates
        self.store = TemplateStore(Path(template_root).resolve() if template_root
                                   else self.state_root.parent / "templates")
        self._tpl_locks: dict[str, asyncio.Lock] = {}
        self._build_failed: dict[PoolClass, float] = {}
        self._build_retry_s = build_retry_s
        self._bg_sem: asyncio.Semaphore | None = None  # one background boot/restore
        self._bg_pending: set[PoolClass] = set()
        self._bg_tasks: set[asyncio.Task] = set()
        self._internal: set[str] = set()  # vm names of template/pool VMs alive here
        self._pool: dict[PoolClass, _PoolClassState] = {
            tuple(k): _PoolClassState(int(n)) for k, n in (warm_pool or {}).items()
            if int(n) > 0}
        self._pool_task: asyncio.Task | None = None
        self._pool_wake: asyncio.Event | None = None
        self._creating = 0
        self._closed = False

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

    def restore_timeout(self) -> float:
        if self._restore_timeout is not None:
            return self._restore_timeout
        return float(os.environ.get("CORRAL_RESTORE_TIMEOUT", "20"))

    async def _image(self, name: str) -> ImagePaths:
        return await asyncio.to_thread(self._resolve_image, name)

    async def _accel_for(self, img: ImagePaths) -> str:
        if self._forced_accel:
            return self._forced_accel
        self.accel = await choose_accel(img.kernel, img.initrd)
        return self.accel

    def _argv(self, vm_name: str, layout: VmLayout, launch: LaunchParams,
              tap: str | None, mem: MemFile | None = None) -> list[str]:
        return qemu_argv(sandbox_id=vm_name, layout=layout, kernel=Path(launch.kernel),
                         initrd=Path(launch.initrd), accel=launch.accel, vcpus=launch.vcpus,
                         memory_mib=launch.memory_mib, append=launch.append,
                         tap=tap if launch.net else None, mac=launch.mac if launch.net else None,
                         mem=mem)

    def _argv_shape(self, launch: LaunchParams) -> list[str]:
        """The argv with per-VM names and paths as placeholders (for the template key).
        RAM's backing (anonymous or a file) does not change the device model."""
        return self._argv("VM", VmLayout(Path("/VMDIR")), launch, "TAP")

    def _template_launch(self, image: str, img: ImagePaths, accel: str, vcpus: int,
                         memory_mib: int) -> LaunchParams:
        net = self.network is not None
        return LaunchParams(image, img.digest, str(img.kernel), str(img.initrd), accel, vcpus,
                            memory_mib, kernel_cmdline(accel), net,
                            TEMPLATE_MAC if net else None)

    async def _spawn(self, argv: list[str], layout: VmLayout) -> asyncio.subprocess.Process:
        with open(layout.qemu_log, "wb") as logf:
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True)

    @staticmethod
    def _write_meta(vm: _Vm) -> None:
        meta = {"vm_name": vm.vm_name, "net_id": vm.net_id,
                "launch": vm.launch.to_dict() if vm.launch else None,
                "pending_identity": vm.pending, "hostname": vm.hostname,
                "incoming": vm.incoming if vm.pending else None}
        tmp = vm.layout.dir / (VM_META + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.rename(tmp, vm.layout.dir / VM_META)

    @staticmethod
    def _read_meta(d: Path) -> dict:
        try:
            return json.loads((d / VM_META).read_text())
        except (OSError, ValueError):
            return {}

    # -- lifecycle ------------------------------------------------------------
    async def start(self, spec: VmSpec, record: ResourceRecorder) -> VmInfo:
        t0 = time.monotonic()
        sid = spec.sandbox_id
        self._layout(sid)
        if not (1 <= spec.vcpus <= 64) or not (64 <= spec.memory_mib <= 65536):
            raise ValueError("vcpus or memory_mib out of range")
        if sid in self._vms:
            raise VmError(f"{sid} is already running")
        if spec.snapshot_dir and spec.reuse_disk:
            raise ValueError("snapshot_dir and reuse_disk are exclusive")
        self._ensure_background()
        self._creating += 1
        try:
            img = await self._image(spec.image)
            accel = await self._accel_for(img)
            if spec.snapshot_dir:  # a fork: no fallback, the state is the point
                return await self._start_fork(spec, record, img, accel, t0)
            cls: PoolClass = (spec.image, spec.vcpus, spec.memory_mib)
            tpl = None
            if self.templates_enabled and not spec.cold_boot and not spec.reuse_disk:
                info = await self._try_pool(cls, spec, record, t0)
                if info is not None:
                    return info
                try:
                    tpl = await self.find_template(spec.image, spec.vcpus, spec.memory_mib)
                except Exception as e:  # noqa: BLE001 - no template: cold boot
                    log.warning("template lookup failed: %r", e, extra={"sandbox_id": sid})
                if tpl is not None:
                    try:
                        return await self._start_restore(spec, record, tpl.launch, tpl.state,
                                                         tpl.overlay, tpl.key, t0, tpl.memory)
                    except Exception as e:  # noqa: BLE001 - compensated; fall back
                        log.warning("restore from template failed; cold boot instead",
                                    extra={"sandbox_id": sid, "template": tpl.key[:16],
                                           "error": repr(e)})
            info = await self._start_cold(spec, record, img, accel, t0)
            if (self.templates_enabled and tpl is None and not spec.cold_boot
                    and not spec.reuse_disk):
                self._schedule_build(cls)
            return info
        finally:
            self._creating -= 1
            self._wake_pool()

    def _rec_for(self, sid: str, record: ResourceRecorder
                 ) -> tuple[dict[str, str], Callable[[str, str | None], Awaitable[None]]]:
        created: dict[str, str] = {}

        async def rec(kind: str, value: str | None) -> None:
            if value is None:
                created.pop(kind, None)
            else:
                created[kind] = value
            await record(sid, kind, value)
        return created, rec

    async def _start_cold(self, spec: VmSpec, record: ResourceRecorder, img: ImagePaths,
                          accel: str, t0: float) -> VmInfo:
        sid = spec.sandbox_id
        layout = self._layout(sid)
        created, rec = self._rec_for(sid, record)
        vm: _Vm | None = None
        net_id = sid
        try:
            self.state_root.mkdir(parents=True, exist_ok=True)
            reuse = spec.reuse_disk and layout.overlay.exists()
            layout.dir.mkdir(mode=0o700, exist_ok=reuse)
            await rec(K_DIR, str(layout.dir))
            if reuse:  # a restart: same disk, fresh sockets
                layout.qmp.unlink(missing_ok=True)
                layout.agent.unlink(missing_ok=True)
                meta = self._read_meta(layout.dir)
                if meta.get("vm_name") not in (None, sid):
                    await rec(K_VMNAME, None)  # the new QEMU is named after the sandbox
                if meta.get("net_id") and meta["net_id"] != sid:  # adopted from the pool
                    net_id = meta["net_id"]
                    await rec(K_NETID, net_id)
            else:
                await _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                           "-b", str(img.rootfs), str(layout.overlay))
            await rec(K_OVERLAY, str(layout.overlay))
            lease = None
            if self.network is not None:
                await rec(K_LEASE, f"pending|{net_id}")  # before it exists: a crash leaves a key
                lease = await self.network.allocate(net_id, spec.egress)
                await rec(K_TAP, lease.tap)
                await rec(K_LEASE, lease_record(lease))
            hostname = spec.name if spec.name and HOSTNAME_RE.match(spec.name) else None
            append = kernel_cmdline(accel, lease.ip if lease else None,
                                    lease.gateway if lease else None,
                                    lease.prefix_len if lease else None, hostname)
            launch = LaunchParams(spec.image, img.digest, str(img.kernel), str(img.initrd),
                                  accel, spec.vcpus, spec.memory_mib, append,
                                  lease is not None, lease.mac if lease else None)
            argv = self._argv(sid, layout, launch, lease.tap if lease else None)
            await rec(K_QMP, str(layout.qmp))
            await rec(K_AGENT, str(layout.agent))
            vm = _Vm(sid, layout, 0, accel, ip=lease.ip if lease else None,
                     launch=launch, net_id=net_id, mac=lease.mac if lease else None)
            self._write_meta(vm)
            proc = await self._spawn(argv, layout)
            vm.pid, vm.proc = proc.pid, proc
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
        return self._ready(vm, "cold", t0, None)

    def _ready(self, vm: _Vm, mode: str, t0: float, source: str | None) -> VmInfo:
        boot_ms = int((time.monotonic() - t0) * 1000)
        log.info("VM ready", extra={"sandbox_id": vm.sandbox_id, "pid": vm.pid,
                                    "accel": vm.accel, "boot_ms": boot_ms,
                                    "start_mode": mode, "source": source})
        return VmInfo(vm.sandbox_id, vm.pid, vm.accel, vm.ip, boot_ms, mode, vm.mac, source)

    async def _start_restore(self, spec: VmSpec, record: ResourceRecorder,
                             launch: LaunchParams, state: Path, overlay: Path,
                             source: str, t0: float, memory: Path | None = None) -> VmInfo:
        """Restore a template (`memory`: its RAM file, mapped copy-on-write) or a
        snapshot (RAM in `state`) as sandbox `spec.sandbox_id` with its own identity."""
        sid = spec.sandbox_id
        layout = self._layout(sid)
        created, rec = self._rec_for(sid, record)
        vm: _Vm | None = None
        try:
            if launch.net != (self.network is not None):
                raise VmError("snapshot device model and driver network disagree")
            self.state_root.mkdir(parents=True, exist_ok=True)
            layout.dir.mkdir(mode=0o700)
            await rec(K_DIR, str(layout.dir))
            await rec(K_OVERLAY, str(layout.overlay))
            lease = None
            if self.network is not None:
                await rec(K_LEASE, f"pending|{sid}")
            # The disk copy and the network port are independent: both at once.
            # Both finish before any failure is raised, so compensation sees all.
            copied, lease = await asyncio.gather(
                asyncio.to_thread(copy_file, overlay, layout.overlay),
                self.network.allocate(sid, spec.egress) if self.network is not None
                else _none(), return_exceptions=True)
            for r in (copied, lease):
                if isinstance(r, BaseException):
                    raise r
            if lease is not None:
                await rec(K_TAP, lease.tap)
                await rec(K_LEASE, lease_record(lease))
            argv = self._argv(sid, layout, launch, lease.tap if lease else None,
                              MemFile(memory, share=False) if memory else None)
            argv += ["-incoming", "defer"]
            await rec(K_QMP, str(layout.qmp))
            await rec(K_AGENT, str(layout.agent))
            vm = _Vm(sid, layout, 0, launch.accel, ip=lease.ip if lease else None,
                     launch=launch, mac=lease.mac if lease else None, pending=True,
                     hostname=_host(spec),
                     incoming={"state": str(state), "ignore_shared": memory is not None})
            self._write_meta(vm)  # before the pid is recorded: reconcile needs it
            proc = await self._spawn(argv, layout)
            vm.pid, vm.proc = proc.pid, proc
            self._vms[sid] = vm
            await rec(K_PID, str(proc.pid))
            await self._connect(vm, self.restore_timeout(), incoming=True,
                                state=state, ignore_shared=memory is not None)
            await self._activate(vm, spec, lease)
        except BaseException as e:
            log.warning("restore failed; cleaning up",
                        extra={"sandbox_id": sid, "error": repr(e),
                               "qemu_log": _tail(layout.qemu_log, 500)})
            self._vms.pop(sid, None)
            await asyncio.shield(self._teardown(sid, layout, vm, created, rec))
            raise
        return self._ready(vm, "restore", t0, source)

    async def _activate(self, vm: _Vm, spec: VmSpec, lease: NetLeaseLike | None) -> None:
        """Run a restored (paused) guest and hand it its identity before anyone uses
        it. `lease` None: no NIC, or (warm pool) eth0 got the lease at fill time."""
        t0 = time.monotonic()
        hostname = spec.name if spec.name and HOSTNAME_RE.match(spec.name) else None
        net = _net_identity(lease)
        await vm.qmp.execute("cont")
        t_cont = time.monotonic()
        # hello + configure in one write (one round trip): the guest answers the
        # versioned hello first, then applies the identity.
        try:
            _hello, conf = await vm.agent.handshake_configure(
                self.restore_timeout(), env=dict(spec.env), hostname=hostname,
                entropy=os.urandom(256), time_ns=time.time_ns(), net=net)
        except TimeoutError:
            if vm.agent.hello is None:
                raise VmBootTimeout("restored guest agent did not answer hello") from None
            raise
        vm.pending = False
        await asyncio.to_thread(self._write_meta, vm)
        log.info("identity handed off", extra={
            "sandbox_id": vm.sandbox_id, "handoff_ms": int((time.monotonic() - t0) * 1000),
            "cont_ms": int((t_cont - t0) * 1000), "guest_ms": conf.get("ms")})

    async def _start_fork(self, spec: VmSpec, record: ResourceRecorder, img: ImagePaths,
                          accel: str, t0: float) -> VmInfo:
        d = Path(spec.snapshot_dir).resolve()
        m = await asyncio.to_thread(read_manifest, d)
        launch = validate_manifest(m, d)  # TemplateInvalid is a ValueError
        if (launch.vcpus, launch.memory_mib) != (spec.vcpus, spec.memory_mib):
            raise ValueError(f"snapshot is {launch.vcpus} vcpus/{launch.memory_mib} MiB, "
                             f"spec asks {spec.vcpus}/{spec.memory_mib}")
        if launch.image != spec.image:
            raise ValueError(f"snapshot is of image {launch.image!r}, spec asks {spec.image!r}")
        if launch.accel != accel:
            raise ValueError(f"snapshot was taken under {launch.accel}, host runs {accel}")
        if launch.net != (self.network is not None):
            raise ValueError("snapshot and driver disagree about networking")
        want = key_inputs(launch, self._argv_shape(launch))
        if m.get("inputs") != want:
            raise ValueError("snapshot is for another kernel, initrd, QEMU or device model")
        return await self._start_restore(spec, record, launch, d / STATE, d / OVERLAY,
                                         str(d), t0)

    async def _connect(self, vm: _Vm, timeout: float, incoming: bool = False,
                       state: Path | None = None, ignore_shared: bool = False,
                       resumed: bool = False) -> None:
        """QMP then agent hello (or, for an incoming migration, start loading
        `state` if given (QEMU waits with `-incoming defer`) and wait until it is
        loaded: the guest stays paused), failing fast if QEMU exits.
        `ignore_shared`: the stream holds no RAM (a template's; RAM is its file).
        `resumed`: a restarted agent's adoption; the load may have begun already."""
        exited = asyncio.ensure_future(procs.wait_exit(vm.pid, timeout + 5))

        async def connect() -> None:
            deadline = time.monotonic() + timeout
            # QEMU creates the sockets early in start-up; between bind() and
            # listen() a connect is refused (seen with 10 boots at once).
            vm.qmp = await _connect_when_listening(
                lambda: QmpClient.connect(str(vm.layout.qmp)), exited, deadline, "QMP")
            vm.agent = await _connect_when_listening(
                lambda: AgentClient.connect(str(vm.layout.agent)), exited, deadline, "agent")
            if incoming:
                started = resumed and (await vm.qmp.execute("query-migrate") or {}).get("status")
                if state is not None and not started:
                    if ignore_shared:
                        await vm.qmp.execute("migrate-set-capabilities", {"capabilities": [
                            {"capability": "x-ignore-shared", "state": True}]})
                    await vm.qmp.execute("migrate-incoming",
                                         {"uri": "exec:cat " + shlex.quote(str(state))})
                while True:
                    st = await vm.qmp.status()
                    if st != "inmigrate":
                        break
                    if time.monotonic() > deadline:
                        raise VmBootTimeout("incoming migration did not finish")
                    await asyncio.sleep(0.005)
                if st not in ("paused", "running", "postmigrate", "prelaunch"):
                    raise VmError(f"restored VM in state {st}")
                return
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
        vm_name = resources.get(K_VMNAME) or (vm.vm_name if vm else sid)
        net_id = resources.get(K_NETID) or (vm.net_id if vm else sid)
        if vm is not None:
            for c in (vm.agent, vm.qmp):
                if c is not None:
                    await c.close()
        pid = int(resources[K_PID]) if resources.get(K_PID) else (vm.pid if vm else None)
        if pid:
            await procs.kill_verified(pid, vm_name, self.state_root)
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
            await self.network.release(net_id)
            if rec:
                for kind in (K_TAP, K_LEASE):
                    if kind in resources:
                        await rec(kind, None)
        for d in {layout.dir, self.state_root / vm_name}:
            if d.exists() and SANDBOX_ID_RE.match(d.name):
                shutil.rmtree(d, ignore_errors=True)
        if rec:
            for kind in (K_VMNAME, K_NETID, K_DIR):
                if kind in resources:
                    await rec(kind, None)

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
            await procs.kill_verified(vm.pid, vm.vm_name, self.state_root)
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
        vm = self._vms.get(sandbox_id)
        if pid is None and vm is not None:
            pid = str(vm.pid)
        name = resources.get(K_VMNAME) or (vm.vm_name if vm else sandbox_id)
        return bool(pid) and procs.is_ours(int(pid), name, self.state_root)

    # -- templates ----------------------------------------------------------------
    async def _template_key(self, image: str, vcpus: int, memory_mib: int
                            ) -> tuple[str, str, dict, LaunchParams]:
        img = await self._image(image)
        accel = await self._accel_for(img)
        launch = self._template_launch(image, img, accel, vcpus, memory_mib)
        inputs = await asyncio.to_thread(key_inputs, launch, self._argv_shape(launch))
        return (TemplateStore.class_name(image, vcpus, memory_mib), template_key(inputs),
                inputs, launch)

    async def find_template(self, image: str = "default", vcpus: int = 1,
                            memory_mib: int = 256) -> Template | None:
        """The valid template for this class and the current inputs, or None."""
        cls, key, inputs, _ = await self._template_key(image, vcpus, memory_mib)
        return await asyncio.to_thread(self.store.find, cls, key, inputs)

    async def ensure_template(self, image: str = "default", vcpus: int = 1,
                              memory_mib: int = 256) -> Template:
        """Build (once, across processes) and return the template for this class."""
        cls, key, inputs, launch = await self._template_key(image, vcpus, memory_mib)
        if (t := await asyncio.to_thread(self.store.find, cls, key, inputs)) is not None:
            return t
        async with self._tpl_locks.setdefault(key, asyncio.Lock()):
            lk = self.store.lock(key)
            await asyncio.to_thread(lk.acquire)
            try:  # the loser of the race reuses the winner's result
                if (t := await asyncio.to_thread(self.store.find, cls, key, inputs)) is not None:
                    return t
                return await self._build_template(cls, key, inputs, launch)
            finally:
                lk.release()

    async def _build_template(self, cls: str, key: str, inputs: dict,
                              launch: LaunchParams) -> Template:
        t0 = time.monotonic()
        vm_name = f"tpl-{key[:12]}"
        layout = self._layout(vm_name)
        # Leftovers of a builder that was killed: its QEMU, its VM dir, its temp dirs.
        if (pid := procs.find_ours(self.state_root).get(vm_name)) is not None:
            await procs.kill_verified(pid, vm_name, self.state_root)
        shutil.rmtree(layout.dir, ignore_errors=True)
        await asyncio.to_thread(self.store.clean_builds, key)
        build = await asyncio.to_thread(self.store.new_build_dir, key)
        self._internal.add(vm_name)
        vm: _Vm | None = None
        try:
            self.state_root.mkdir(parents=True, exist_ok=True)
            layout.dir.mkdir(mode=0o700)
            img = await self._image(launch.image)
            await _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                       "-b", str(img.rootfs), str(layout.overlay))
            # The template NIC's TAP is made by QEMU itself (not persistent, on no
            # bridge): it goes away with the template VM.
            # RAM lives in the build dir's `memory` file (shared): saving then only
            # writes device state, and clones map that file copy-on-write.
            argv = self._argv(vm_name, layout, launch, f"crt{key[:12]}",
                              MemFile(build / MEMORY, share=True))
            proc = await self._spawn(argv, layout)
            vm = _Vm(vm_name, layout, proc.pid, launch.accel, proc=proc, launch=launch)
            await self._connect(vm, self.boot_timeout(launch.accel))
            boot_ms = int((time.monotonic() - t0) * 1000)
            await self._warm_guest(vm)
            save_ms = await save_state(vm.qmp, build / STATE, ignore_shared=True)
            await asyncio.to_thread(copy_file, layout.overlay, build / OVERLAY)
            m = await asyncio.to_thread(
                write_manifest, build, kind="template", key=key, inputs=inputs, launch=launch,
                extra={"class": cls, "boot_ms": boot_ms, "save_ms": save_ms,
                       "build_ms": int((time.monotonic() - t0) * 1000)})
            final = await asyncio.to_thread(self.store.publish, build, cls, key)
            pruned = await asyncio.to_thread(self.store.prune_class, cls, key)
            log.info("template built", extra={"class": cls, "key": key[:16],
                                              "build_ms": m["build_ms"], "save_ms": save_ms,
                                              "sizes": m["sizes"],
                                              "pruned": [p.name for p in pruned]})
            return Template(key, final, launch, m)
        finally:
            await asyncio.shield(self._discard(vm, layout))
            self._internal.discard(vm_name)
            shutil.rmtree(build, ignore_errors=True)

    async def _warm_guest(self, vm: _Vm) -> None:
        """Before a template is saved: run the commands a sandbox's first exec
        most likely needs, so their files are in the guest page cache every
        clone inherits (no virtio-blk reads on the first exec after restore)."""
        for cmd in WARM_CMDS:
            try:
                await vm.agent.exec(ExecRequest(list(cmd), timeout_s=30))
            except Exception as e:  # noqa: BLE001 - a warmer cache is optional
                log.warning("template warm-up %s failed: %r", cmd[0], e)

    async def _discard(self, vm: _Vm | None, layout: VmLayout) -> None:
        """Kill an internal (template or pool) VM and remove its directory."""
        if vm is not None:
            for c in (vm.agent, vm.qmp):
                if c is not None:
                    await c.close()
            await procs.kill_verified(vm.pid, vm.vm_name, self.state_root, term_timeout=1.0)
            if vm.proc is not None:
                await vm.proc.wait()
        shutil.rmtree(layout.dir, ignore_errors=True)

    def _schedule_build(self, cls: PoolClass) -> None:
        """Background template build for a class (one at a time per driver)."""
        if cls in self._bg_pending or self._closed:
            return
        if time.monotonic() - self._build_failed.get(cls, -1e9) < self._build_retry_s:
            return
        self._bg_pending.add(cls)

        async def run() -> None:
            try:
                async with self._bg_sem:
                    await self.ensure_template(*cls)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - creates keep cold-booting
                self._build_failed[cls] = time.monotonic()
                log.warning("background template build failed", extra={
                    "class": cls, "error": repr(e)})
            finally:
                self._bg_pending.discard(cls)
        self._spawn_bg(run())

    def _spawn_bg(self, coro) -> asyncio.Task:  # noqa: ANN001
        t = asyncio.ensure_future(coro)
        self._bg_tasks.add(t)
        t.add_done_callback(self._bg_tasks.discard)
        return t

    def _ensure_background(self) -> None:
        if self._bg_sem is None:
            self._bg_sem = asyncio.Semaphore(1)
            self._pool_wake = asyncio.Event()
        if self._pool and self._pool_task is None and not self._closed:
            self._pool_task = self._spawn_bg(self._pool_loop())

    # -- snapshots (fork) -----------------------------------------------------------
    async def snapshot(self, sandbox_id: str, dest_dir: str | Path) -> SnapshotInfo:
        """Live snapshot: stop, save state, copy the overlay, continue. The
        sandbox keeps running; `start(VmSpec(..., snapshot_dir=dest_dir))` forks it."""
        vm = self._vm(sandbox_id)
        launch = vm.launch or (LaunchParams.from_dict(m) if (
            m := self._read_meta(vm.layout.dir).get("launch")) else None)
        if launch is None:
            raise VmError(f"{sandbox_id}: launch parameters unknown; cannot snapshot")
        dest = Path(dest_dir).resolve()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"{dest} exists and is not empty")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        try:
            inputs = await asyncio.to_thread(key_inputs, launch, self._argv_shape(launch))
            was = await vm.qmp.status()
            t0 = time.monotonic()
            try:
                await save_state(vm.qmp, tmp / STATE)
                await asyncio.to_thread(copy_file, vm.layout.overlay, tmp / OVERLAY)
            finally:
                if was == "running":
                    await vm.qmp.execute("cont")
            paused_ms = int((time.monotonic() - t0) * 1000)
            m = await asyncio.to_thread(
                write_manifest, tmp, kind="snapshot", key=None, inputs=inputs, launch=launch,
                extra={"sandbox_id": sandbox_id, "paused_ms": paused_ms})
            if dest.exists():
                dest.rmdir()
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("snapshot taken", extra={"sandbox_id": sandbox_id, "dir": str(dest),
                                          "paused_ms": paused_ms, "sizes": m["sizes"]})
        return SnapshotInfo(sandbox_id, str(dest), launch.image, launch.vcpus,
                            launch.memory_mib, m["sizes"][STATE], m["sizes"][OVERLAY],
                            paused_ms)

    # -- warm pool --------------------------------------------------------------------
    def pool_stats(self) -> dict:
        return {f"{c[0]}/{c[1]}/{c[2]}": {"target": s.target, "ready": len(s.ready),
                                          "filling": s.filling, "hits": s.hits,
                                          "misses": s.misses}
                for c, s in self._pool.items()}

    async def wait_pool_ready(self, timeout: float = 120.0) -> None:
        """Until every pool class holds its target (tests, bench)."""
        self._ensure_background()
        deadline = time.monotonic() + timeout
        while any(len(s.ready) < s.target for s in self._pool.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm pool not full: {self.pool_stats()}")
            self._wake_pool()
            await asyncio.sleep(0.1)

    def _wake_pool(self) -> None:
        if self._pool_wake is not None:
            self._pool_wake.set()

    async def _try_pool(self, cls: PoolClass, spec: VmSpec, record: ResourceRecorder,
                        t0: float) -> VmInfo | None:
        st = self._pool.get(cls)
        if st is None:
            return None
        while st.ready:
            pv = st.ready.pop(0)
            try:
                info = await self._start_from_pool(pv, spec, record, t0)
                st.hits += 1
                return info
            except Exception as e:  # noqa: BLE001 - compensated; try the next path
                log.warning("pool assignment failed; falling back",
                            extra={"sandbox_id": spec.sandbox_id, "error": repr(e)})
        st.misses += 1
        return None

    async def _start_from_pool(self, pv: _PoolVm, spec: VmSpec, record: ResourceRecorder,
                               t0: float) -> VmInfo:
        sid = spec.sandbox_id
        vm, lease = pv.vm, pv.lease
        layout = self._layout(sid)
        created, rec = self._rec_for(sid, record)
        old_layout = vm.layout
        try:
            if layout.dir.exists():
                raise VmError(f"{layout.dir} exists")
            # Record first (under the sandbox id), then move: a crash in between
            # leaves records reconcile can act on either way.
            await rec(K_VMNAME, vm.vm_name)
            await rec(K_NETID, vm.net_id)
            await rec(K_DIR, str(layout.dir))
            await rec(K_OVERLAY, str(layout.overlay))
            if lease is not None:
                await rec(K_TAP, lease.tap)
                await rec(K_LEASE, lease_record(lease))
            await rec(K_QMP, str(layout.qmp))
            await rec(K_AGENT, str(layout.agent))
            vm.pending, vm.hostname = True, _host(spec)
            self._write_meta(vm)
            await rec(K_PID, str(vm.pid))
            os.rename(old_layout.dir, layout.dir)  # bound sockets follow the rename
            vm.layout, vm.sandbox_id = layout, sid
            self._internal.discard(vm.vm_name)
            self._vms[sid] = vm
            if lease is not None and bool(getattr(lease, "egress", False)) != spec.egress:
                lease = await self.network.allocate(vm.net_id, spec.egress)  # host side only
                await rec(K_LEASE, lease_record(lease))
            await self._activate(vm, spec, None)  # eth0 got this lease when filled
        except BaseException as e:
            log.warning("pool VM assignment failed; cleaning up",
                        extra={"sandbox_id": sid, "error": repr(e)})
            self._vms.pop(sid, None)
            self._internal.discard(vm.vm_name)
            created.setdefault(K_PID, str(vm.pid))
            if lease is not None:
                created.setdefault(K_LEASE, lease_record(lease))
            await asyncio.shield(self._teardown(sid, vm.layout, vm, created, rec))
            shutil.rmtree(old_layout.dir, ignore_errors=True)
            raise
        return self._ready(vm, "pool", t0, pv.template_key)

    async def _pool_loop(self) -> None:
        backoff = 1.0
        while not self._closed:
            need = [c for c, s in self._pool.items() if len(s.ready) + s.filling < s.target]
            if not need or self._creating:
                self._pool_wake.clear()
                await self._pool_wake.wait()
                continue
            cls = need[0]
            st = self._pool[cls]
            async with self._bg_sem:
                if self._creating:  # a create arrived meanwhile: it goes first
                    continue
                st.filling += 1
                try:
                    tpl = await self.ensure_template(*cls)
                    if not self._creating:
                        pv = await self._fill_one(cls, tpl)
                        if self._closed:
                            await self._discard(pv.vm, pv.vm.layout)
                            await self._release_net(pv)
                        else:
                            st.ready.append(pv)
                    backoff = 1.0
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - keep the loop alive
                    log.warning("warm pool refill failed", extra={"class": cls,
                                                                  "error": repr(e)})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                finally:
                    st.filling -= 1

    async def _release_net(self, pv: _PoolVm) -> None:
        if pv.lease is not None and self.network is not None:
            await self.network.release(pv.vm.net_id)

    async def _fill_one(self, cls: PoolClass, tpl: Template) -> _PoolVm:
        """Restore one template VM, paused, with its own TAP, not yet given identity."""
        pool_id = f"pool-{secrets.token_hex(6)}"
        layout = self._layout(pool_id)
        self._internal.add(pool_id)
        vm: _Vm | None = None
        lease = None
        try:
            self.state_root.mkdir(parents=True, exist_ok=True)
            layout.dir.mkdir(mode=0o700)
            await asyncio.to_thread(copy_file, tpl.overlay, layout.overlay)
            if self.network is not None:
                lease = await self.network.allocate(pool_id, False)
            argv = self._argv(pool_id, layout, tpl.launch, lease.tap if lease else None,
                              MemFile(tpl.memory, share=False))
            argv += ["-incoming", "defer"]
            proc = await self._spawn(argv, layout)
            vm = _Vm(pool_id, layout, proc.pid, tpl.launch.accel, proc=proc,
                     ip=lease.ip if lease else None, launch=tpl.launch,
                     mac=lease.mac if lease else None, pending=True,
                     incoming={"state": str(tpl.state), "ignore_shared": True})
            self._write_meta(vm)
            await self._connect(vm, self.restore_timeout(), incoming=True,
                                state=tpl.state, ignore_shared=True)
            await self._prewarm(vm, lease)
            return _PoolVm(cls, vm, lease, tpl.key)
        except BaseException:
            await asyncio.shield(self._discard(vm, layout))
            if lease is not None:
                await asyncio.shield(self.network.release(pool_id))
            self._internal.discard(pool_id)
            raise

    async def _prewarm(self, vm: _Vm, lease: NetLeaseLike | None) -> None:
        """Run a new pool VM briefly, then pause it again: eth0 takes the VM's own
        lease now, and one exec translates (TCG) the paths a create and the
        user's first exec need in this QEMU process. Entropy, clock, hostname
        and env are still handed over at assignment."""
        await vm.qmp.execute("cont")
        try:
            await vm.agent.handshake_configure(
                self.restore_timeout(), entropy=os.urandom(256), time_ns=time.time_ns(),
                net=_net_identity(lease))
            await vm.agent.exec(ExecRequest(["true"], timeout_s=30))
        finally:
            await vm.qmp.execute("stop")

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
            known = {}
            for sid, res in {**keep, **recorded}.items():
                if res.get(K_LEASE) and not res[K_LEASE].startswith("pending|"):
                    net_id = res.get(K_NETID) or sid
                    known[net_id] = self.network.lease_from_record(net_id, res[K_LEASE])
            for st in self._pool.values():  # our own live pool VMs keep their ports
                for pv in st.ready:
                    if pv.lease is not None:
                        known[pv.vm.net_id] = pv.lease
            await self.network.reconcile(known)
        running = procs.find_ours(self.state_root)
        names = {sid: (res.get(K_VMNAME) or sid) for sid, res in recorded.items()}
        for sid, res in recorded.items():
            layout = self._layout(sid)
            pid = int(res[K_PID]) if res.get(K_PID) else None
            rec = _bind(record, sid)
            name = names[sid]
            if pid and procs.is_ours(pid, name, self.state_root):
                meta = self._read_meta(layout.dir)
                vm = _Vm(sid, layout, pid, self.accel, vm_name=name,
                         net_id=res.get(K_NETID) or sid,
                         launch=LaunchParams.from_dict(meta["launch"])
                         if meta.get("launch") else None)
                try:
                    if meta.get("pending_identity"):  # crashed mid-restore: finish it
                        vm.hostname = meta.get("hostname")
                        inc = meta.get("incoming") or {}
                        await self._connect(vm, self.restore_timeout(), incoming=True,
                                            state=Path(inc["state"]) if inc.get("state") else None,
                                            ignore_shared=bool(inc.get("ignore_shared")),
                                            resumed=True)
                        lease = None
                        if self.network is not None and res.get(K_LEASE) and \
                                not res[K_LEASE].startswith("pending|"):
                            lease = self.network.lease_from_record(vm.net_id, res[K_LEASE])
                            vm.ip, vm.mac = lease.ip, lease.mac
                        await self._activate(vm, VmSpec(sid, vm.hostname), lease)
                    else:
                        await self._connect(vm, self.boot_timeout(self.accel))
                    self._vms[sid] = vm
                    adopted.append(sid)
                    running.pop(name, None)
                    continue
                except Exception as e:  # noqa: BLE001 - VmError, OSError, GuestError...
                    log.warning("adopt failed; cleaning", extra={"sandbox_id": sid,
                                                                 "error": repr(e)})
                    for c in (vm.agent, vm.qmp):
                        if c is not None:
                            await c.close()
            await self._teardown(sid, layout, None, res, rec)
            running.pop(name, None)
            cleaned.append(sid)
        for name, pid in running.items():
            if name in self._vms or name in self._internal or any(
                    v.vm_name == name for v in self._vms.values()):
                continue
            await procs.kill_verified(pid, name, self.state_root)
            await self._teardown(name, self._layout(name), None, {}, None)
            killed.append(name)
        if self.state_root.is_dir():
            live_names = set(names.values()) | {v.vm_name for v in self._vms.values()}
            for d in self.state_root.iterdir():
                sid = d.name
                if (sid in self._vms or sid in recorded or sid in keep or sid in live_names
                        or sid in self._internal or not SANDBOX_ID_RE.match(sid)):
                    continue
                shutil.rmtree(d, ignore_errors=True)
                if sid not in killed:
                    cleaned.append(sid)
        await asyncio.to_thread(self.store.clean_builds)
        report = ReconcileReport(adopted, cleaned, killed)
        log.info("reconciled", extra={"adopted": adopted, "cleaned": cleaned,
                                      "killed_unrecorded": killed})
        return report

    async def close(self) -> None:
        """Drop channels; VMs keep running (a restarted agent adopts them). Background
        work stops and warm-pool VMs are destroyed (nobody could adopt them)."""
        self._closed = True
        self._wake_pool()
        for t in list(self._bg_tasks):
            t.cancel()
        await asyncio.gather(*self._bg_tasks, return_exceptions=True)
        for st in self._pool.values():
            while st.ready:
                pv = st.ready.pop()
                try:
                    await self._discard(pv.vm, pv.vm.layout)
                    await self._release_net(pv)
                except Exception as e:  # noqa: BLE001 - reconcile cleans the rest
                    log.warning("pool VM cleanup failed: %r", e)
                self._internal.discard(pv.vm.vm_name)
        for vm in list(self._vms.values()):
            for c in (vm.agent, vm.qmp):
                if c is not None:
                    await c.close()
        self._vms.clear()


async def save_state(qmp: QmpClient, path: Path, timeout: float = 120.0,
                     ignore_shared: bool = False) -> int:
    """Stop the guest and migrate its state into `path` (QEMU 7.2: `exec:`, no
    `file:`). `ignore_shared`: leave out RAM that is a shared file mapping (a
    template's RAM is its file). Returns ms. The VM stays stopped (postmigrate)."""
    t0 = time.monotonic()
    try:
        await qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    except QmpError:
        pass
    await qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": ignore_shared}]})
    await qmp.execute("stop")
    await qmp.execute("migrate", {"uri": "exec:cat > " + shlex.quote(str(path))})
    deadline = time.monotonic() + timeout
    while True:
        r = await qmp.execute("query-migrate")
        status = r.get("status") if isinstance(r, dict) else None
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            raise QmpError(f"migration {status}: {r.get('error-desc', '')}")
        if time.monotonic() > deadline:
            try:
                await qmp.execute("migrate_cancel")
            finally:
                raise VmError("saving VM state timed out")
        await asyncio.sleep(0.01)
    return int((time.monotonic() - t0) * 1000)


async def _connect_when_listening(connect, exited: asyncio.Future, deadline: float,  # noqa: ANN001
                                  what: str):  # noqa: ANN202
    while True:
        try:
            return await connect()
        except (FileNotFoundError, ConnectionRefusedError):
            if exited.done() or time.monotonic() > deadline:
                raise VmError(f"{what} socket never accepted a connection") from None
            await asyncio.sleep(0.002)


async def _none() -> None:
    return None


def _net_identity(lease: NetLeaseLike | None) -> dict | None:
    if lease is None:
        return None
    return {"mac": lease.mac, "ip": lease.ip, "prefix_len": lease.prefix_len,
            "gateway": lease.gateway}


def _host(spec: VmSpec) -> str | None:
    return spec.name if spec.name and HOSTNAME_RE.match(spec.name) else None


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
