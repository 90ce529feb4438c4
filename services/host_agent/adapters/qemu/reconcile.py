"""Reconcile after an agent restart, one phase per function: network ports,
recorded VMs (adopt or clean), unrecorded QEMU processes (kill), stray
directories (remove), abandoned template builds (remove)."""
from __future__ import annotations

import asyncio
import logging
import shutil

from services.host_agent.application.ports import ReconcileReport, ResourceRecorder, VmSpec

from .. import procs
from .launcher import Launcher
from .templates import LaunchParams, TemplateStore
from .vm import (K_NETID, K_PID, K_VMNAME, SANDBOX_ID_RE, NetLeaseLike, SandboxRecorder, Vm,
                 read_meta, recorded_lease)
from .warm_pool import WarmPool

log = logging.getLogger("corral.host_agent.qemu")
Records = dict[str, dict[str, str]]


async def reconcile(launcher: Launcher, pool: WarmPool, store: TemplateStore,
                    recorded: Records, record: ResourceRecorder,
                    keep: Records | None = None) -> ReconcileReport:
    keep = keep or {}
    await _ports(launcher, pool, {**keep, **recorded})
    running = procs.find_ours(launcher.state_root)
    names = {sid: (res.get(K_VMNAME) or sid) for sid, res in recorded.items()}
    adopted, cleaned = [], []
    for sid, res in recorded.items():
        if await _adopt(launcher, sid, res, names[sid]):
            adopted.append(sid)
        else:
            await launcher.teardown(sid, launcher.layout(sid), None, res,
                                    SandboxRecorder(record, sid))
            cleaned.append(sid)
        running.pop(names[sid], None)
    killed = await _kill_unrecorded(launcher, running)
    cleaned += _remove_stray_dirs(launcher, set(recorded) | set(keep) | set(names.values()),
                                  killed)
    await asyncio.to_thread(store.clean_builds)
    live = {v.vm_name for v in launcher.vms.values()} | launcher.internal
    await launcher.priv.forget_others(live)  # cgroups of VMs that are gone
    report = ReconcileReport(adopted, cleaned, killed)
    log.info("reconciled", extra={"adopted": adopted, "cleaned": cleaned,
                                  "killed_unrecorded": killed})
    return report


async def _ports(launcher: Launcher, pool: WarmPool, records: Records) -> None:
    """Ports and rules first: only recorded leases (and our pool's) stay."""
    if launcher.network is None:
        return
    known: dict[str, NetLeaseLike] = {}
    for sid, res in records.items():
        if (value := recorded_lease(res)) is not None:
            net_id = res.get(K_NETID) or sid
            known[net_id] = launcher.network.lease_from_record(net_id, value)
    known.update(pool.leases())
    await launcher.network.reconcile(known)


async def _adopt(launcher: Launcher, sid: str, res: dict[str, str], name: str) -> bool:
    """Take a recorded VM whose QEMU still runs back into the table; a VM that
    crashed mid-restore gets its load and identity hand-off finished."""
    pid = int(res[K_PID]) if res.get(K_PID) else None
    if not pid or not procs.is_ours(pid, name, launcher.state_root):
        return False
    layout = launcher.layout(sid)
    meta = read_meta(layout.dir)
    vm = Vm(sid, layout, pid, launcher.accel, vm_name=name, net_id=res.get(K_NETID) or sid,
            launch=LaunchParams.from_dict(meta["launch"]) if meta.get("launch") else None)
    try:
        if meta.get("pending_identity"):
            await _finish_restore(launcher, vm, meta, res)
        else:
            await launcher.connect(vm, launcher.boot_timeout(launcher.accel))
    except Exception as e:  # noqa: BLE001 - VmError, OSError, GuestError...
        log.warning("adopt failed; cleaning", extra={"sandbox_id": sid, "error": repr(e)})
        await vm.close_channels()
        return False
    launcher.vms[sid] = vm
    launcher.uids.adopt(name, pid)
    return True


async def _finish_restore(launcher: Launcher, vm: Vm, meta: dict, res: dict[str, str]) -> None:
    vm.hostname = meta.get("hostname")
    inc = meta.get("incoming") or {}
    fd = inc.get("state_fd")
    await launcher.connect(vm, launcher.restore_timeout(), incoming=True,
                           state_fd=fd if type(fd) is int else None,
                           ignore_shared=bool(inc.get("ignore_shared")), resumed=True)
    lease = None
    if launcher.network is not None and (value := recorded_lease(res)) is not None:
        lease = launcher.network.lease_from_record(vm.net_id, value)
        vm.ip, vm.mac = lease.ip, lease.mac
    await launcher.activate(vm, VmSpec(vm.sandbox_id, vm.hostname), lease)


async def _kill_unrecorded(launcher: Launcher, running: dict[str, int]) -> list[str]:
    """Our QEMU processes nobody recorded (and not ours to keep): killed."""
    killed = []
    live = {v.vm_name for v in launcher.vms.values()}
    for name, pid in running.items():
        if name in launcher.vms or name in launcher.internal or name in live:
            continue
        await launcher.priv.kill_vm(pid, name, launcher.state_root)
        await launcher.teardown(name, launcher.layout(name), None, {}, None)
        killed.append(name)
    return killed


def _remove_stray_dirs(launcher: Launcher, known: set[str], killed: list[str]) -> list[str]:
    """VM directories that belong to no recorded, kept, live or internal VM."""
    if not launcher.state_root.is_dir():
        return []
    keep = known | set(launcher.vms) | {v.vm_name for v in launcher.vms.values()}
    cleaned = []
    for d in launcher.state_root.iterdir():
        sid = d.name
        if sid in keep or sid in launcher.internal or not SANDBOX_ID_RE.match(sid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if sid not in killed:
            cleaned.append(sid)
    return cleaned
