"""Host agent use cases: start, stop, destroy and reconcile, driving the VMM."""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common.bus import Poison
from contracts import Envelope
from contracts.commands import (DestroySandbox, HostCommand, PauseSandbox, ResumeSandbox,
                                StartSandbox, StopSandbox)
from contracts.sandbox import (Failure, SandboxDestroyed, SandboxFailed, SandboxPaused,
                               SandboxResumed, SandboxStarted, SandboxStarting, SandboxStopped)
from contracts.image import ImageCommand
from contracts.snapshot import (DeleteSnapshot, SnapshotCommand, SnapshotCreated,
                                SnapshotDeleted, SnapshotFailed, TakeSnapshot)

from ..domain.vm import Vm
from .ports import (DiskCheck, ExecChunk, ExecRequest, ExecResult, FileListing, FileOp, FileStat,
                    ProcAnswer, ProcCall, ProcSink, VmmDriver, VmSpec)
from .image_builds import ImageBuilds
from .records import VmRecords

log = logging.getLogger("corral.host_agent")
# Every command ends by its deadline (then it is retried by redelivery), so a
# stuck VM never holds a command slot that other sandboxes need.
COMMAND_DEADLINE_S = {"StartSandbox": 300.0, "StopSandbox": 60.0, "DestroySandbox": 60.0,
                      "PauseSandbox": 30.0, "ResumeSandbox": 30.0, "TakeSnapshot": 300.0,
                      "DeleteSnapshot": 60.0}
REPLY_NS = uuid.UUID("7e5d4c3b-2a19-4f8e-8d7c-6b5a49382716")


def _dump(m: Envelope) -> dict[str, Any]:
    return m.model_dump(mode="json")


def _common(cmd: HostCommand) -> dict[str, Any]:
    return dict(op_id=cmd.op_id, org_id=cmd.org_id, sandbox_id=cmd.sandbox_id,
                traceparent=cmd.traceparent)


class Refused(Exception):
    """A request this host will not serve: `code` is an RPC error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


EnvSource = Callable[[str, str, str], Awaitable[dict[str, str]]]


async def _no_env_source(sandbox_id: str, org_id: str, op_id: str) -> dict[str, str]:
    raise RuntimeError("this host cannot fetch sandbox env values")


class NoSpace(Exception):
    """The host's disk would fall below its reserve."""


def _room_enough(need_mib: int) -> str | None:
    return None


class HostAgentService:
    def __init__(self, host_id: str, records: VmRecords, driver: VmmDriver,
                 publish: Callable[[Envelope], Awaitable[object]],
                 snapshot_root: Path | None = None, env_source: EnvSource = _no_env_source,
                 disk_lacks: DiskCheck = _room_enough, images: ImageBuilds | None = None):
        self.host_id = host_id
        self.disk_lacks = disk_lacks  # (MiB about to be written) -> why not, or None
        self.env_source = env_source  # (sandbox, org, op) -> env, for sealed envs
        self.snapshot_root = snapshot_root
        self.records = records
        self.driver = driver
        self.publish = publish  # for replies about VMs this host never had
        self.images = images
        self._tasks: set[asyncio.Future] = set()  # resumed boots: keep them referenced
        self._booting: set[str] = set()

    async def handle(self, cmd: Envelope) -> None:
        """A command from this host's subject (the bus consumer's handler)."""
        if not isinstance(cmd, (HostCommand, SnapshotCommand, ImageCommand)):
            raise Poison(f"{cmd.type} is not a host command")
        if cmd.host_id != self.host_id:
            raise Poison("command for another host")
        log.info("%s received", cmd.type, extra={"stage": f"received:{cmd.type}"})
        try:
            async with asyncio.timeout(COMMAND_DEADLINE_S.get(cmd.type, 60.0)):
                await self._dispatch(cmd)
        except TimeoutError:
            log.error("%s did not finish by its deadline; it will be retried", cmd.type)
            raise

    async def _dispatch(self, cmd: HostCommand | SnapshotCommand | ImageCommand) -> None:
        if isinstance(cmd, ImageCommand):
            if self.images is None:
                raise Poison("this host agent takes no image commands")
            await self.images.handle(cmd)
        elif isinstance(cmd, StartSandbox):
            await self.start(cmd)
        elif isinstance(cmd, StopSandbox):
            await self.stop(cmd)
        elif isinstance(cmd, DestroySandbox):
            await self.destroy(cmd)
        elif isinstance(cmd, TakeSnapshot):
            await self.take_snapshot(cmd)
        elif isinstance(cmd, DeleteSnapshot):
            await self.delete_snapshot(cmd)
        elif isinstance(cmd, PauseSandbox):
            await self.pause_or_resume(cmd, "running", "paused", SandboxPaused)
        elif isinstance(cmd, ResumeSandbox):
            await self.pause_or_resume(cmd, "paused", "running", SandboxResumed)

    async def _record(self, sandbox_id: str, kind: str, value: str | None) -> None:
        await asyncio.to_thread(self.records.record_resource, sandbox_id, kind, value)

    async def start(self, cmd: StartSandbox) -> None:
        starting = SandboxStarting(host_id=self.host_id, **_common(cmd))
        spec_doc = {**cmd.spec.model_dump(mode="json"), "secret_env": cmd.secret_env}
        vm, new = await asyncio.to_thread(self.records.accept, cmd.sandbox_id, cmd.org_id,
                                          spec_doc, _dump(starting))
        if not new and cmd.restart and vm.state == "stopped":
            await self.restart(cmd, vm)
            return
        if not new and (vm.state != "starting" or vm.sandbox_id in self._booting):
            log.info("start of a known sandbox ignored (state %s)", vm.state)
            return
        if not new:  # accepted earlier but no boot under way: a handler died mid-boot
            await self._remove_resources(vm.sandbox_id)
        await self._boot(vm.sandbox_id, vm.spec, vm.starting)

    async def restart(self, cmd: StartSandbox, vm: Vm) -> None:
        """Boot a stopped VM again from its own disk."""
        starting = _dump(SandboxStarting(host_id=self.host_id, **_common(cmd)))
        await asyncio.to_thread(self.records.transition, cmd.sandbox_id, "starting", starting)
        await self._boot(cmd.sandbox_id, vm.spec, starting, reuse_disk=True)

    def _snapshot_dir(self, snapshot_id: str) -> Path:
        if self.snapshot_root is None:
            raise RuntimeError("this host keeps no snapshots")
        return self.snapshot_root / snapshot_id

    async def take_snapshot(self, cmd: TakeSnapshot) -> None:
        vm = await asyncio.to_thread(self.records.get, cmd.sandbox_id)
        ids = dict(op_id=cmd.op_id, org_id=cmd.org_id, sandbox_id=cmd.sandbox_id,
                   snapshot_id=cmd.snapshot_id, traceparent=cmd.traceparent)
        if vm is None:
            await self.publish(SnapshotFailed(host_id=self.host_id, failure=Failure(
                code="not_running", message="no such sandbox on this host"), **ids))
            return
        if cmd.snapshot_id in vm.snapshots:
            return  # redelivery: already answered
        t0 = time.monotonic()
        fact: SnapshotCreated | SnapshotFailed
        try:
            if vm.state != "running":
                raise RuntimeError(f"sandbox is {vm.state}")
            await self._need_disk(int(vm.spec.get("memory_mib", 256)))  # RAM image, at least
            info = await self.driver.snapshot(cmd.sandbox_id,
                                              str(self._snapshot_dir(cmd.snapshot_id)))
            fact = SnapshotCreated(host_id=self.host_id, image=info.image, vcpus=info.vcpus,
                                   memory_mib=info.memory_mib,
                                   size_bytes=info.state_bytes + info.overlay_bytes,
                                   took_ms=int((time.monotonic() - t0) * 1000), **ids)
        except Exception as e:  # noqa: BLE001 - any failure is reported, nothing half-kept
            log.warning("snapshot failed: %r", e)
            await asyncio.to_thread(shutil.rmtree, self._snapshot_dir(cmd.snapshot_id), True)
            fact = SnapshotFailed(host_id=self.host_id, failure=Failure(
                code="no_space" if isinstance(e, NoSpace) else "snapshot_failed",
                message=str(e)[:500] or e.__class__.__name__), **ids)
        await asyncio.to_thread(self.records.note, cmd.sandbox_id, _dump(fact))

    async def _need_disk(self, need_mib: int) -> None:
        lack = await asyncio.to_thread(self.disk_lacks, need_mib)
        if lack:
            raise NoSpace(lack)

    async def delete_snapshot(self, cmd: DeleteSnapshot) -> None:
        await asyncio.to_thread(shutil.rmtree, self._snapshot_dir(cmd.snapshot_id), True)
        done = SnapshotDeleted(host_id=self.host_id, op_id=cmd.op_id, org_id=cmd.org_id,
                               sandbox_id=cmd.sandbox_id, snapshot_id=cmd.snapshot_id,
                               traceparent=cmd.traceparent)
        vm = await asyncio.to_thread(self.records.get, cmd.sandbox_id)
        if vm is not None and vm.snapshots.get(cmd.snapshot_id) != "SnapshotDeleted":
            await asyncio.to_thread(self.records.note, cmd.sandbox_id, _dump(done))
        elif vm is None:
            await self.publish(done.model_copy(update={
                "event_id": str(uuid.uuid5(REPLY_NS, cmd.event_id))}))

    async def pause_or_resume(self, cmd: HostCommand, from_state: str, to_state: str,
                              fact: type[SandboxPaused | SandboxResumed]) -> None:
        vm = await asyncio.to_thread(self.records.get, cmd.sandbox_id)
        if vm is None or vm.state != from_state:
            log.info("%s ignored: sandbox is %s", cmd.type, vm.state if vm else "unknown")
            return
        if to_state == "paused":
            await self.driver.pause(cmd.sandbox_id)
        else:
            await self.driver.resume(cmd.sandbox_id)
        await asyncio.to_thread(self.records.transition, cmd.sandbox_id, to_state,
                                _dump(fact(host_id=self.host_id, **_common(cmd))))

    async def _boot(self, sandbox_id: str, spec_doc: dict[str, Any],
                    starting: dict[str, Any], reuse_disk: bool = False) -> None:
        """Boot the VM and report Started or Failed; `starting` gives the ids.
        A sealed env is fetched now and kept in memory only."""
        self._booting.add(sandbox_id)
        try:  # booting until its outcome is recorded: a redelivered start is ignored
            await self._boot_once(sandbox_id, spec_doc, starting, reuse_disk)
        finally:
            self._booting.discard(sandbox_id)

    async def _boot_once(self, sandbox_id: str, spec_doc: dict[str, Any],
                         starting: dict[str, Any], reuse_disk: bool) -> None:
        snap = spec_doc.get("snapshot_id")
        common = {k: starting[k] for k in ("op_id", "org_id", "sandbox_id", "traceparent")}
        try:
            await self._need_disk(0)  # overlays grow from here: the reserve must be there
            env = dict(spec_doc.get("env") or {})
            if spec_doc.get("secret_env"):
                env = await self.env_source(sandbox_id, common["org_id"], common["op_id"])
            spec = VmSpec(sandbox_id, spec_doc.get("name"), spec_doc.get("image", "default"),
                          spec_doc.get("vcpus", 1), spec_doc.get("memory_mib", 256), env,
                          bool((spec_doc.get("network") or {}).get("egress")), reuse_disk,
                          snapshot_dir=str(self._snapshot_dir(snap)) if snap and not reuse_disk
                          else None)
            info = await self.driver.start(spec, self._record)
        except Exception as e:
            log.warning("start failed: %s", e, exc_info=True)
            try:
                await self._remove_resources(sandbox_id)
            except Exception:
                log.exception("cleanup after a failed start failed")
            failed = SandboxFailed(host_id=self.host_id, failure=Failure(
                code="no_space" if isinstance(e, NoSpace) else "boot_failed",
                message=str(e)[:500] or e.__class__.__name__), **common)
            await asyncio.to_thread(self.records.transition, sandbox_id, "failed", _dump(failed))
            return
        started = SandboxStarted(host_id=self.host_id, vcpus=spec.vcpus,
                                 memory_mib=spec.memory_mib, accel=info.accel, ip=info.ip,
                                 boot_ms=info.boot_ms, start_mode=getattr(info, "start_mode", None),
                                 **common)
        await asyncio.to_thread(self.records.transition, sandbox_id, "running", _dump(started))
        log.info("sandbox running", extra={"boot_ms": info.boot_ms, "accel": info.accel,
                                           "start_mode": getattr(info, "start_mode", None)})

    async def _remove_resources(self, sandbox_id: str) -> None:
        vm = await asyncio.to_thread(self.records.get, sandbox_id)
        if vm is None:
            return
        await self.driver.destroy(sandbox_id, dict(vm.resources))
        for kind in list(vm.resources):
            await asyncio.to_thread(self.records.record_resource, sandbox_id, kind, None)

    async def stop(self, cmd: StopSandbox) -> None:
        vm = await asyncio.to_thread(self.records.get, cmd.sandbox_id)
        if vm is None or vm.state in ("stopped", "destroyed", "failed"):
            return
        if vm.state == "paused":  # let the guest flush its disk before power-off
            await self.driver.resume(cmd.sandbox_id)
        await self.driver.stop(cmd.sandbox_id)
        await asyncio.to_thread(self.records.transition, cmd.sandbox_id, "stopped",
                                _dump(SandboxStopped(host_id=self.host_id, **_common(cmd))))

    async def destroy(self, cmd: DestroySandbox) -> None:
        vm = await asyncio.to_thread(self.records.get, cmd.sandbox_id)
        done = SandboxDestroyed(host_id=self.host_id, **_common(cmd))
        if vm is None:  # never ran here: still answer, with an id stable across retries
            await self.publish(done.model_copy(update={
                "event_id": str(uuid.uuid5(REPLY_NS, cmd.event_id))}))
            return
        if vm.state == "destroyed":
            return
        await self._remove_resources(cmd.sandbox_id)
        await asyncio.to_thread(self.records.transition, cmd.sandbox_id, "destroyed",
                                _dump(done))

    async def reconcile(self) -> dict[str, list[str]]:
        """Adopt live recorded VMs, fail dead ones, kill leftovers we own, and
        boot again any VM whose boot the previous agent did not finish."""
        vms = await asyncio.to_thread(self.records.all_vms)
        active = {vm.sandbox_id: vm for vm in vms if vm.active}
        stopped = {vm.sandbox_id: dict(vm.resources) for vm in vms if vm.state == "stopped"}
        report = await self.driver.reconcile(
            {sid: dict(vm.resources) for sid, vm in active.items()}, self._record,
            keep=stopped)
        resumed = [sid for sid, vm in active.items() if vm.state == "starting"]
        for sid in resumed:
            await self._remove_resources(sid)
            self._booting.add(sid)  # from now: a redelivered start must not clean it up
            self._tasks.add(asyncio.ensure_future(
                self._boot(sid, active[sid].spec, active[sid].starting)))
        for sid in report.cleaned:
            vm = active.get(sid)
            if vm is None or sid in resumed:
                continue
            await self._remove_resources(sid)
            failed = SandboxFailed(op_id=f"op_reconcile_{self.host_id}"[:64], org_id=vm.org_id,
                                   sandbox_id=sid, host_id=self.host_id, failure=Failure(
                                       code="vm_died",
                                       message=f"VM was {vm.state} but gone when the "
                                               "agent restarted"))
            await asyncio.to_thread(self.records.transition, sid, "failed", _dump(failed))
        log.info("reconciled: %d adopted, %d cleaned, %d unrecorded killed, %d boots resumed",
                 len(report.adopted), len(report.cleaned), len(report.killed_unrecorded),
                 len(resumed), extra={"adopted": ",".join(report.adopted),
                                      "cleaned": ",".join(report.cleaned)})
        return {"adopted": report.adopted, "cleaned": report.cleaned,
                "killed_unrecorded": report.killed_unrecorded, "resumed": resumed}

    def usage(self) -> tuple[int, int, int]:
        return self.records.usage()

    # -- inside running sandboxes: only the owner's, and only while running ------
    async def running(self, sandbox_id: str, org_id: str) -> None:
        """Refuse unless this host runs the sandbox for `org_id` (its own records)."""
        vm = await asyncio.to_thread(self.records.get, sandbox_id)
        if vm is None or vm.org_id != org_id:
            raise Refused("not_found", "no such sandbox on this host")
        if vm.state != "running":
            raise Refused("conflict", f"sandbox is {vm.state}")

    async def exec(self, sandbox_id: str, org_id: str, req: ExecRequest,
                   on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None
                   ) -> ExecResult:
        await self.running(sandbox_id, org_id)
        return await self.driver.exec(sandbox_id, req, on_chunk)

    async def put_file(self, sandbox_id: str, org_id: str, path: str | bytes,
                       data: bytes, append: bool = False) -> None:
        await self.running(sandbox_id, org_id)
        await self.driver.put_file(sandbox_id, path, data, append)

    async def get_file(self, sandbox_id: str, org_id: str, path: str | bytes) -> bytes:
        await self.running(sandbox_id, org_id)
        return await self.driver.get_file(sandbox_id, path)

    async def get_range(self, sandbox_id: str, org_id: str, path: str | bytes, offset: int,
                        length: int) -> tuple[bytes, int]:
        await self.running(sandbox_id, org_id)
        return await self.driver.get_range(sandbox_id, path, offset, length)

    async def list_files(self, sandbox_id: str, org_id: str, path: str | bytes) -> FileListing:
        await self.running(sandbox_id, org_id)
        return await self.driver.list_files(sandbox_id, path)

    async def file_op(self, sandbox_id: str, org_id: str, op: FileOp) -> FileStat | None:
        await self.running(sandbox_id, org_id)
        return await self.driver.file_op(sandbox_id, op)

    async def proc(self, sandbox_id: str, org_id: str, call: ProcCall,
                   on_event: ProcSink | None = None) -> ProcAnswer:
        await self.running(sandbox_id, org_id)
        return await self.driver.proc(sandbox_id, call, on_event)
