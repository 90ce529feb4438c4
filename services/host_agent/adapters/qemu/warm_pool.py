"""Warm pool: per size class, restored VMs kept paused with their own port and
already warmed, so a create is an assignment (cont + identity)."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field

from services.host_agent.application.ports import ExecRequest, ResourceRecorder, VmInfo, VmSpec

from .background import Background
from .cmdline import MemFile
from .errors import VmError
from .launcher import Launcher
from .template_builder import PoolClass, TemplateBuilder
from .templates import Template, copy_file
from .vm import (K_AGENT, K_DIR, K_LEASE, K_NETID, K_OVERLAY, K_PID, K_QMP, K_TAP, K_VMNAME,
                 NetLeaseLike, SandboxRecorder, Vm, guest_hostname, lease_record, net_identity,
                 write_meta)

log = logging.getLogger("corral.host_agent.qemu")


@dataclass
class PoolVm:
    cls: PoolClass
    vm: Vm
    lease: NetLeaseLike | None
    template_key: str


@dataclass
class PoolClassState:
    target: int
    ready: list[PoolVm] = field(default_factory=list)
    filling: int = 0
    hits: int = 0
    misses: int = 0


class WarmPool:
    def __init__(self, launcher: Launcher, templates: TemplateBuilder, background: Background,
                 targets: dict[PoolClass, int] | None) -> None:
        self.launcher = launcher
        self.templates = templates
        self.background = background
        self.classes: dict[PoolClass, PoolClassState] = {
            (str(k[0]), int(k[1]), int(k[2])): PoolClassState(int(n))
            for k, n in (targets or {}).items() if int(n) > 0}
        self._loop_task: asyncio.Task | None = None

    def ensure_running(self) -> None:
        if self.classes and self._loop_task is None and not self.background.closed:
            self._loop_task = self.background.spawn(self._refill_loop())

    def stats(self) -> dict[str, dict[str, int]]:
        return {f"{c[0]}/{c[1]}/{c[2]}": {"target": s.target, "ready": len(s.ready),
                                          "filling": s.filling, "hits": s.hits,
                                          "misses": s.misses}
                for c, s in self.classes.items()}

    def leases(self) -> dict[str, NetLeaseLike]:
        """Network leases of the ready VMs (reconcile keeps their ports)."""
        return {pv.vm.net_id: pv.lease for st in self.classes.values() for pv in st.ready
                if pv.lease is not None}

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every class holds its target (tests, bench)."""
        self.ensure_running()
        deadline = time.monotonic() + timeout
        while any(len(s.ready) < s.target for s in self.classes.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm pool not full: {self.stats()}")
            self.background.wake()
            await asyncio.sleep(0.1)

    # -- assignment -------------------------------------------------------------
    async def try_assign(self, cls: PoolClass, spec: VmSpec, record: ResourceRecorder,
                         t0: float) -> VmInfo | None:
        st = self.classes.get(cls)
        if st is None:
            return None
        while st.ready:
            pv = st.ready.pop(0)
            try:
                info = await self._assign(pv, spec, record, t0)
                st.hits += 1
                return info
            except Exception as e:  # noqa: BLE001 - compensated; try the next path
                log.warning("pool assignment failed; falling back",
                            extra={"sandbox_id": spec.sandbox_id, "error": repr(e)})
        st.misses += 1
        return None

    async def _assign(self, pv: PoolVm, spec: VmSpec, record: ResourceRecorder,
                      t0: float) -> VmInfo:
        lr = self.launcher
        sid = spec.sandbox_id
        vm, lease = pv.vm, pv.lease
        layout = lr.layout(sid)
        rec = SandboxRecorder(record, sid)
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
            vm.pending, vm.hostname = True, guest_hostname(spec)
            write_meta(vm)
            await rec(K_PID, str(vm.pid))
            os.rename(old_layout.dir, layout.dir)  # bound sockets follow the rename
            vm.layout, vm.sandbox_id = layout, sid
            lr.internal.discard(vm.vm_name)
            lr.vms[sid] = vm
            if lease is not None and lr.network is not None and \
                    lease.egress != spec.egress:
                lease = await lr.network.allocate(vm.net_id, spec.egress)  # host side only
                await rec(K_LEASE, lease_record(lease))
            await lr.activate(vm, spec, None)  # eth0 got this lease when filled
        except BaseException as e:
            log.warning("pool VM assignment failed; cleaning up",
                        extra={"sandbox_id": sid, "error": repr(e)})
            lr.vms.pop(sid, None)
            lr.internal.discard(vm.vm_name)
            rec.created.setdefault(K_PID, str(vm.pid))
            if lease is not None:
                rec.created.setdefault(K_LEASE, lease_record(lease))
            await asyncio.shield(lr.teardown(sid, vm.layout, vm, rec.created, rec))
            shutil.rmtree(old_layout.dir, ignore_errors=True)
            raise
        return lr.ready(vm, "pool", t0, pv.template_key)

    # -- refill -----------------------------------------------------------------
    async def _refill_loop(self) -> None:
        bg = self.background
        backoff = 1.0
        while not bg.closed:
            need = [c for c, s in self.classes.items() if len(s.ready) + s.filling < s.target]
            if not need or bg.creating:
                await bg.idle()
                continue
            cls = need[0]
            st = self.classes[cls]
            async with bg.slot:
                if bg.creating:  # a create arrived meanwhile: it goes first
                    continue
                st.filling += 1
                try:
                    tpl = await self.templates.ensure(*cls)
                    if not bg.creating:
                        pv = await self._fill_one(cls, tpl)
                        if bg.closed:
                            await self._discard(pv)
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

    async def _fill_one(self, cls: PoolClass, tpl: Template) -> PoolVm:
        """Restore one template VM, paused, with its own TAP, not yet given identity."""
        lr = self.launcher
        pool_id = f"pool-{secrets.token_hex(6)}"
        layout = lr.layout(pool_id)
        lr.internal.add(pool_id)
        vm: Vm | None = None
        lease = None
        try:
            lr.state_root.mkdir(parents=True, exist_ok=True)
            lr.make_dirs(layout)
            await asyncio.to_thread(copy_file, tpl.overlay, layout.overlay)
            if lr.network is not None:
                lease = await lr.network.allocate(pool_id, False)
            mem = MemFile(await asyncio.to_thread(lr.memory.sealed, tpl.memory), share=False)
            started = await lr.start_qemu(pool_id, layout, tpl.launch,
                                          lease.tap if lease else None, mem, tpl.state)
            vm = Vm(pool_id, layout, started.pid, tpl.launch.accel,
                    ip=lease.ip if lease else None, launch=tpl.launch,
                    mac=lease.mac if lease else None, pending=True,
                    incoming={"state_fd": started.state_fd, "ignore_shared": True})
            write_meta(vm)
            await lr.connect(vm, lr.restore_timeout(), incoming=True,
                             state_fd=started.state_fd, ignore_shared=True)
            await self._prewarm(vm, lease)
            return PoolVm(cls, vm, lease, tpl.key)
        except BaseException:
            await asyncio.shield(lr.discard(vm, layout))
            if lease is not None and lr.network is not None:
                await asyncio.shield(lr.network.release(pool_id))
            lr.internal.discard(pool_id)
            raise

    async def _prewarm(self, vm: Vm, lease: NetLeaseLike | None) -> None:
        """Run a new pool VM briefly, then pause it again: eth0 takes the VM's own
        lease now, and one exec translates (TCG) the paths a create and the
        user's first exec need in this QEMU process. Entropy, clock, hostname
        and env are still handed over at assignment."""
        qmp, agent = vm.control
        await qmp.execute("cont")
        try:
            await agent.handshake_configure(
                self.launcher.restore_timeout(), entropy=os.urandom(256),
                time_ns=time.time_ns(), net=net_identity(lease))
            await agent.exec(ExecRequest(["true"], timeout_s=30))
        finally:
            await qmp.execute("stop")

    async def _discard(self, pv: PoolVm) -> None:
        await self.launcher.discard(pv.vm, pv.vm.layout)
        if pv.lease is not None and self.launcher.network is not None:
            await self.launcher.network.release(pv.vm.net_id)

    async def close(self) -> None:
        """Destroy the ready VMs: nobody could adopt them after this process."""
        for st in self.classes.values():
            while st.ready:
                pv = st.ready.pop()
                try:
                    await self._discard(pv)
                except Exception as e:  # noqa: BLE001 - reconcile cleans the rest
                    log.warning("pool VM cleanup failed: %r", e)
                self.launcher.internal.discard(pv.vm.vm_name)
