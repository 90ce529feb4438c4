"""QemuDriver: the VmmDriver for QEMU microvm guests (KVM or TCG).

A facade over its collaborators, which depend one way:
driver -> reconcile, snapshots, warm_pool -> template_builder -> start_paths,
launcher -> vm, migration, cmdline, qmp, agent_client, procs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.host_agent.adapters.guest_image import ImagePaths, ensure_image
from services.host_agent.application.ports import (ExecChunk, ExecRequest, ExecResult, FileListing,
                                                   FileOp, FileStat, ProcAnswer, ProcCall, ProcSink,
                                                   ReconcileReport,
                                                   ResourceRecorder, SnapshotInfo, VmInfo, VmSpec)

from ..jail.cgroups import Cgroups
from ..jail.privileged import LocalPrivileged, Privileged
from .. import procs
from . import start_paths
from .background import Background
from .errors import QmpError, VmError
from .launcher import Launcher, VmAllowance
from .reconcile import reconcile
from .snapshots import take_snapshot
from .template_builder import PoolClass, TemplateBuilder
from .templates import Template, TemplateStore
from .vm import K_PID, Network
from .warm_pool import WarmPool

log = logging.getLogger("corral.host_agent.qemu")
SYNC_BEFORE_STOP_S = 10.0  # a guest's chance to flush its disk before power-off


class QemuDriver:
    def __init__(self, state_root: str | Path = ".corral/host/vms", *,
                 network: Network | None = None,
                 image_resolver: Callable[[str], ImagePaths] = ensure_image,
                 accel: str | None = None, boot_timeout_s: float | None = None,
                 template_root: str | Path | None = None, templates: bool = True,
                 warm_pool: dict[PoolClass, int] | None = None,
                 restore_timeout_s: float | None = None,
                 build_retry_s: float = 300.0,
                 privileged: Privileged | None = None,
                 allowance: VmAllowance | None = None) -> None:
        """`templates`: restore creates from snapshot templates (built in the
        background after the first cold boot of a class). `warm_pool`:
        {(image, vcpus, memory_mib): n} restored-but-unassigned VMs kept paused.
        `privileged`: who jails QEMU (default: this process, which must be root)."""
        root = Path(state_root).resolve()
        self.launcher = Launcher(root, network, image_resolver, accel, boot_timeout_s,
                                 restore_timeout_s, privileged or local_privileged(root),
                                 allowance or VmAllowance())
        self.templates_enabled = templates
        self.background = Background()
        self.store = TemplateStore(Path(template_root).resolve() if template_root
                                   else root.parent / "templates")
        self.templates = TemplateBuilder(self.launcher, self.store, self.background,
                                         build_retry_s)
        self.pool = WarmPool(self.launcher, self.templates, self.background, warm_pool)

    @property
    def accel(self) -> str:
        return self.launcher.accel

    @property
    def network(self) -> Network | None:
        return self.launcher.network

    @property
    def state_root(self) -> Path:
        return self.launcher.state_root

    # -- lifecycle ------------------------------------------------------------
    async def start(self, spec: VmSpec, record: ResourceRecorder) -> VmInfo:
        """A fork restores its snapshot; otherwise the warm pool, then a template
        restore, then a cold boot (which schedules the class's template)."""
        t0 = time.monotonic()
        lr = self.launcher
        lr.layout(spec.sandbox_id)
        if not (1 <= spec.vcpus <= 64) or not (64 <= spec.memory_mib <= 65536):
            raise ValueError("vcpus or memory_mib out of range")
        if spec.sandbox_id in lr.vms:
            raise VmError(f"{spec.sandbox_id} is already running")
        if spec.snapshot_dir and spec.reuse_disk:
            raise ValueError("snapshot_dir and reuse_disk are exclusive")
        self.pool.ensure_running()
        with self.background.create():
            img = await lr.image(spec.image)
            accel = await lr.accel_for(img)
            if spec.snapshot_dir:
                return await start_paths.fork(lr, spec, record, accel, t0)
            fast = self.templates_enabled and not spec.cold_boot and not spec.reuse_disk
            cls: PoolClass = (spec.image, spec.vcpus, spec.memory_mib)
            tpl = None
            if fast:
                if (info := await self.pool.try_assign(cls, spec, record, t0)) is not None:
                    return info
                tpl = await self._find_for_create(cls, spec)
                if tpl is not None and (info := await self._restore(tpl, spec, record, t0)):
                    return info
            info = await start_paths.cold_boot(lr, spec, record, img, accel, t0)
            if fast and tpl is None:
                self.templates.schedule(cls)
            return info

    async def _find_for_create(self, cls: PoolClass, spec: VmSpec) -> Template | None:
        try:
            return await self.templates.find(*cls)
        except Exception as e:  # noqa: BLE001 - no template: cold boot
            log.warning("template lookup failed: %r", e, extra={"sandbox_id": spec.sandbox_id})
            return None

    async def _restore(self, tpl: Template, spec: VmSpec, record: ResourceRecorder,
                       t0: float) -> VmInfo | None:
        try:
            return await start_paths.restore(self.launcher, spec, record, tpl.launch,
                                             tpl.state, tpl.overlay, tpl.key, t0, tpl.memory)
        except Exception as e:  # noqa: BLE001 - compensated; fall back to a cold boot
            log.warning("restore from template failed; cold boot instead",
                        extra={"sandbox_id": spec.sandbox_id, "template": tpl.key[:16],
                               "error": repr(e)})
            return None

    async def stop(self, sandbox_id: str) -> None:
        """Power the VM off (QEMU exits); files stay until destroy. The guest
        gets a bounded chance to flush its disk; the VM leaves the table only
        once its QEMU is gone."""
        vm = self.launcher.vms.get(sandbox_id)
        if vm is None:
            return
        if vm.agent is not None and not vm.agent.closed:
            try:  # flush the guest's page cache so a restart finds its writes
                async with asyncio.timeout(SYNC_BEFORE_STOP_S):
                    await vm.agent.exec(ExecRequest(["sync"], timeout_s=SYNC_BEFORE_STOP_S))
            except Exception as e:  # noqa: BLE001 - power off all the same
                log.warning("sync before stop failed: %r", e, extra={"sandbox_id": sandbox_id})
        if vm.qmp is not None:
            await vm.qmp.quit()
        if not await procs.wait_exit(vm.pid, 5.0):
            await self.launcher.priv.kill_vm(vm.pid, vm.vm_name, self.state_root)
        await self.launcher.reap(vm)
        await vm.close_channels()
        self.launcher.vms.pop(sandbox_id, None)

    async def destroy(self, sandbox_id: str, resources: dict[str, str]) -> None:
        layout = self.launcher.layout(sandbox_id)
        vm = self.launcher.vms.get(sandbox_id)
        res = dict(resources)
        if vm is not None:
            res.setdefault(K_PID, str(vm.pid))
        await self.launcher.teardown(sandbox_id, layout, vm, res, None)
        self.launcher.vms.pop(sandbox_id, None)

    async def pause(self, sandbox_id: str) -> None:
        await self._set_run_state(sandbox_id, "stop", "paused")

    async def resume(self, sandbox_id: str) -> None:
        await self._set_run_state(sandbox_id, "cont", "running")

    async def _set_run_state(self, sandbox_id: str, command: str, want: str) -> None:
        qmp = self.launcher.qmp(sandbox_id)
        await qmp.execute(command)
        if (s := await qmp.status()) != want:
            raise QmpError(f"expected {want}, got {s}")

    async def is_alive(self, sandbox_id: str, resources: dict[str, str]) -> bool:
        return self.launcher.is_alive(sandbox_id, resources)

    # -- guest operations -------------------------------------------------------
    async def exec(self, sandbox_id: str, req: ExecRequest,
                   on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None
                   ) -> ExecResult:
        return await self.launcher.agent(sandbox_id).exec(req, on_chunk)

    async def put_file(self, sandbox_id: str, path: str | bytes, data: bytes,
                       append: bool = False) -> None:
        await self.launcher.agent(sandbox_id).put_file(path, data, append=append)

    async def get_range(self, sandbox_id: str, path: str | bytes, offset: int,
                        length: int) -> tuple[bytes, int]:
        return await self.launcher.agent(sandbox_id).get_range(path, offset, length)

    async def get_file(self, sandbox_id: str, path: str | bytes) -> bytes:
        return await self.launcher.agent(sandbox_id).get_file(path)

    async def list_files(self, sandbox_id: str, path: str | bytes) -> FileListing:
        return await self.launcher.agent(sandbox_id).list_files(path)

    async def file_op(self, sandbox_id: str, op: FileOp) -> FileStat | None:
        return await self.launcher.agent(sandbox_id).file_op(op)

    async def proc(self, sandbox_id: str, call: ProcCall,
                   on_event: ProcSink | None = None) -> ProcAnswer:
        return await self.launcher.agent(sandbox_id).proc(call, on_event)

    # -- snapshots, templates, warm pool ------------------------------------------
    async def snapshot(self, sandbox_id: str, dest_dir: str) -> SnapshotInfo:
        return await take_snapshot(self.launcher, sandbox_id, dest_dir)

    async def ensure_template(self, image: str = "default", vcpus: int = 1,
                              memory_mib: int = 256) -> Template:
        return await self.templates.ensure(image, vcpus, memory_mib)

    async def prepare(self, image: str, vcpus: int, memory_mib: int) -> bool:
        """The class's template, and its sealed RAM copy made now, so that the
        first create of the class does not copy the RAM on its own clock."""
        if self.templates_enabled:
            tpl = await self.ensure_template(image, vcpus, memory_mib)
            await asyncio.to_thread(self.launcher.memory.sealed, tpl.memory)
        return self.templates_enabled

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return self.pool.stats()

    async def wait_pool_ready(self, timeout: float = 120.0) -> None:
        await self.pool.wait_ready(timeout)

    # -- recovery ---------------------------------------------------------------
    async def reconcile(self, recorded: dict[str, dict[str, str]],
                        record: ResourceRecorder,
                        keep: dict[str, dict[str, str]] | None = None) -> ReconcileReport:
        return await reconcile(self.launcher, self.pool, self.store, recorded, record, keep)

    async def close(self) -> None:
        """Drop channels; VMs keep running (a restarted agent adopts them). Background
        work stops and warm-pool VMs are destroyed (nobody could adopt them)."""
        await self.background.close()
        await self.pool.close()
        for vm in list(self.launcher.vms.values()):
            await vm.close_channels()
        self.launcher.vms.clear()
        self.launcher.memory.close()
        self.launcher.priv.close()


def local_privileged(state_root: Path, agent_uid: int | None = None) -> LocalPrivileged:
    """Jails set up by this process (root): VM cgroups where the host has them.
    `agent_uid`: who owns the VMs' files (default: this process)."""
    cgroups = Cgroups()
    if not cgroups.available():
        log.warning("no usable cgroups here: VMs run jailed but without CPU/memory limits")
    return LocalPrivileged(state_root.parent / "jail", cgroups if cgroups.available() else None,
                           agent_uid)
