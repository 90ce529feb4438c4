"""The ways a sandbox's VM starts: a cold boot, a restore (from a template or
a live snapshot), and a fork (a snapshot checked against this host first).

Each records every resource the moment it exists and, on failure, removes
what it created before raising (compensation).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.host_agent.adapters.guest_image import ImagePaths
from services.host_agent.application.ports import ResourceRecorder, VmInfo, VmSpec

from .cmdline import MemFile, VmLayout, kernel_cmdline
from .errors import VmError
from .launcher import Launcher, new_overlay, tail
from .templates import (OVERLAY, STATE, LaunchParams, copy_file, key_inputs, read_manifest,
                        validate_manifest)
from .vm import (K_AGENT, K_DIR, K_LEASE, K_NETID, K_OVERLAY, K_PID, K_QMP, K_TAP, K_VMNAME,
                 NetLeaseLike, SandboxRecorder, Vm, guest_hostname, lease_record, read_meta,
                 write_meta)

log = logging.getLogger("corral.host_agent.qemu")


async def cold_boot(launcher: Launcher, spec: VmSpec, record: ResourceRecorder,
                    img: ImagePaths, accel: str, t0: float) -> VmInfo:
    """Boot the kernel; `spec.reuse_disk`: a restart on the stopped VM's disk."""
    sid = spec.sandbox_id
    layout = launcher.layout(sid)
    rec = SandboxRecorder(record, sid)
    vm: Vm | None = None
    try:
        launcher.state_root.mkdir(parents=True, exist_ok=True)
        reuse = spec.reuse_disk and layout.overlay.exists()
        launcher.make_dirs(layout, reuse)
        await rec(K_DIR, str(layout.dir))
        net_id = await _reuse_disk(layout, rec) if reuse else sid
        if not reuse:
            await new_overlay(img, layout.overlay)
        await rec(K_OVERLAY, str(layout.overlay))
        lease = None
        if launcher.network is not None:
            await rec(K_LEASE, f"pending|{net_id}")  # before it exists: a crash leaves a key
            lease = await launcher.network.allocate(net_id, spec.egress)
            await rec(K_TAP, lease.tap)
            await rec(K_LEASE, lease_record(lease))
        hostname = guest_hostname(spec)
        append = kernel_cmdline(accel, lease.ip if lease else None,
                                lease.gateway if lease else None,
                                lease.prefix_len if lease else None, hostname)
        launch = LaunchParams(spec.image, img.digest, str(img.kernel), str(img.initrd),
                              accel, spec.vcpus, spec.memory_mib, append,
                              lease is not None, lease.mac if lease else None)
        await rec(K_QMP, str(layout.qmp))
        await rec(K_AGENT, str(layout.agent))
        vm = Vm(sid, layout, 0, accel, ip=lease.ip if lease else None,
                launch=launch, net_id=net_id, mac=lease.mac if lease else None)
        write_meta(vm)
        started = await launcher.start_qemu(sid, layout, launch, lease.tap if lease else None)
        vm.pid = started.pid
        launcher.vms[sid] = vm
        await rec(K_PID, str(started.pid))
        await launcher.connect(vm, launcher.boot_timeout(accel))
        await vm.control[1].configure(hostname=hostname, **img.exec_defaults(dict(spec.env)))
    except BaseException as e:
        log.error("VM start failed; cleaning up",
                  extra={"sandbox_id": sid, "error": repr(e),
                         "console_tail": await launcher.console_tail(vm),
                         "qemu_log": tail(layout.qemu_log, 500)})
        launcher.vms.pop(sid, None)
        await asyncio.shield(launcher.teardown(sid, layout, vm, rec.created, rec))
        raise
    return launcher.ready(vm, "cold", t0, None)


async def _reuse_disk(layout: VmLayout, rec: SandboxRecorder) -> str:
    """A restart: same disk, fresh sockets. Returns the network lease's key."""
    sid = rec.sandbox_id
    layout.qmp.unlink(missing_ok=True)
    layout.agent.unlink(missing_ok=True)
    meta = read_meta(layout.dir)
    if meta.get("vm_name") not in (None, sid):
        await rec(K_VMNAME, None)  # the new QEMU is named after the sandbox
    if meta.get("net_id") and meta["net_id"] != sid:  # adopted from the pool
        await rec(K_NETID, meta["net_id"])
        return str(meta["net_id"])
    return sid


async def restore(launcher: Launcher, spec: VmSpec, record: ResourceRecorder,
                  launch: LaunchParams, state: Path, overlay: Path, source: str, t0: float,
                  memory: Path | None = None) -> VmInfo:
    """Restore a template (`memory`: its RAM file, mapped copy-on-write) or a
    snapshot (RAM in `state`) as sandbox `spec.sandbox_id` with its own identity."""
    sid = spec.sandbox_id
    layout = launcher.layout(sid)
    rec = SandboxRecorder(record, sid)
    vm: Vm | None = None
    try:
        if launch.net != (launcher.network is not None):
            raise VmError("snapshot device model and driver network disagree")
        launcher.state_root.mkdir(parents=True, exist_ok=True)
        launcher.make_dirs(layout)
        await rec(K_DIR, str(layout.dir))
        await rec(K_OVERLAY, str(layout.overlay))
        lease = await _copy_and_allocate(launcher, spec, overlay, layout.overlay, rec)
        mem = (MemFile(await asyncio.to_thread(launcher.memory.sealed, memory), share=False)
               if memory else None)
        await rec(K_QMP, str(layout.qmp))
        await rec(K_AGENT, str(layout.agent))
        vm = Vm(sid, layout, 0, launch.accel, ip=lease.ip if lease else None,
                launch=launch, mac=lease.mac if lease else None, pending=True,
                hostname=guest_hostname(spec))
        started = await launcher.start_qemu(sid, layout, launch, lease.tap if lease else None,
                                            mem, state)
        vm.pid = started.pid
        vm.incoming = {"state_fd": started.state_fd, "ignore_shared": memory is not None}
        write_meta(vm)  # before the pid is recorded: reconcile needs it
        launcher.vms[sid] = vm
        await rec(K_PID, str(started.pid))
        await launcher.connect(vm, launcher.restore_timeout(), incoming=True,
                               state_fd=started.state_fd, ignore_shared=memory is not None)
        await launcher.activate(vm, spec, lease)
    except BaseException as e:
        log.warning("restore failed; cleaning up",
                    extra={"sandbox_id": sid, "error": repr(e),
                           "qemu_log": tail(layout.qemu_log, 500)})
        launcher.vms.pop(sid, None)
        await asyncio.shield(launcher.teardown(sid, layout, vm, rec.created, rec))
        raise
    return launcher.ready(vm, "restore", t0, source)


async def _copy_and_allocate(launcher: Launcher, spec: VmSpec, src: Path, dst: Path,
                             rec: SandboxRecorder) -> NetLeaseLike | None:
    """The disk copy and the network port are independent: both at once. Both
    finish before any failure is raised, so compensation sees all."""
    net = launcher.network
    if net is not None:
        await rec(K_LEASE, f"pending|{spec.sandbox_id}")
    copied, lease = await asyncio.gather(
        asyncio.to_thread(copy_file, src, dst),
        net.allocate(spec.sandbox_id, spec.egress) if net is not None else _none(),
        return_exceptions=True)
    for r in (copied, lease):
        if isinstance(r, BaseException):
            raise r
    if lease is None:
        return None
    assert not isinstance(lease, BaseException)
    await rec(K_TAP, lease.tap)
    await rec(K_LEASE, lease_record(lease))
    return lease


async def fork(launcher: Launcher, spec: VmSpec, record: ResourceRecorder, accel: str,
               t0: float) -> VmInfo:
    """Restore a live snapshot (`spec.snapshot_dir`) after checking that it fits the
    spec and this host: no fallback, the state is the point."""
    assert spec.snapshot_dir is not None
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
    if launch.net != (launcher.network is not None):
        raise ValueError("snapshot and driver disagree about networking")
    want = key_inputs(launch, launcher.argv_shape(launch))
    if m.get("inputs") != want:
        raise ValueError("snapshot is for another kernel, initrd, QEMU or device model")
    return await restore(launcher, spec, record, launch, d / STATE, d / OVERLAY, str(d), t0)


async def _none() -> None:
    return None
