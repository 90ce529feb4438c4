"""Snapshot templates per size class: found by key, built once across
processes (boot, warm the page cache, save with RAM as a shared file), and
built in the background after the first cold boot of a class."""
from __future__ import annotations

import asyncio
import os
import logging
import shutil
import time

from services.host_agent.adapters.guest_image import ImagePaths
from services.host_agent.application.ports import ExecRequest

from .. import procs
from .background import Background
from . import memory
from .cmdline import MemFile, kernel_cmdline
from .launcher import Launcher, new_overlay
from .migration import save_state
from .templates import (MEMORY, OVERLAY, STATE, TEMPLATE_MAC, LaunchParams, Template, TemplateStore,
                        copy_file, key_inputs, template_key, write_manifest)
from .vm import Vm

log = logging.getLogger("corral.host_agent.qemu")
PoolClass = tuple[str, int, int]  # (image, vcpus, memory_mib)
WARM_CMDS = (("true",), ("sh", "-c", ":"), ("ls", "/"), ("python3", "-c", "pass"))


class TemplateBuilder:
    def __init__(self, launcher: Launcher, store: TemplateStore, background: Background,
                 build_retry_s: float) -> None:
        self.launcher = launcher
        self.store = store
        self.background = background
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[PoolClass, float] = {}
        self._pending: set[PoolClass] = set()
        self._retry_s = build_retry_s

    def launch_for(self, image: str, img: ImagePaths, accel: str, vcpus: int,
                   memory_mib: int) -> LaunchParams:
        net = self.launcher.network is not None
        return LaunchParams(image, img.digest, str(img.kernel), str(img.initrd), accel, vcpus,
                            memory_mib, kernel_cmdline(accel), net,
                            TEMPLATE_MAC if net else None)

    async def key_for(self, image: str, vcpus: int, memory_mib: int
                      ) -> tuple[str, str, dict, LaunchParams]:
        """(class name, key, key inputs, launch parameters) for the current inputs."""
        img = await self.launcher.image(image)
        accel = await self.launcher.accel_for(img)
        launch = self.launch_for(image, img, accel, vcpus, memory_mib)
        inputs = await asyncio.to_thread(key_inputs, launch, self.launcher.argv_shape(launch))
        return (TemplateStore.class_name(image, vcpus, memory_mib), template_key(inputs),
                inputs, launch)

    async def find(self, image: str = "default", vcpus: int = 1,
                   memory_mib: int = 256) -> Template | None:
        """The valid template for this class and the current inputs, or None."""
        cls, key, inputs, _ = await self.key_for(image, vcpus, memory_mib)
        return await asyncio.to_thread(self.store.find, cls, key, inputs)

    async def ensure(self, image: str = "default", vcpus: int = 1,
                     memory_mib: int = 256) -> Template:
        """Build (once, across processes) and return the template for this class."""
        cls, key, inputs, launch = await self.key_for(image, vcpus, memory_mib)
        if (t := await asyncio.to_thread(self.store.find, cls, key, inputs)) is not None:
            return t
        async with self._locks.setdefault(key, asyncio.Lock()):
            lk = self.store.lock(key)
            await asyncio.to_thread(lk.acquire)
            try:  # the loser of the race reuses the winner's result
                if (t := await asyncio.to_thread(self.store.find, cls, key, inputs)) is not None:
                    return t
                return await self._build(cls, key, inputs, launch)
            finally:
                lk.release()

    def schedule(self, cls: PoolClass) -> None:
        """Build a class's template in the background (one boot at a time)."""
        if cls in self._pending or self.background.closed:
            return
        if time.monotonic() - self._failed.get(cls, -1e9) < self._retry_s:
            return
        self._pending.add(cls)

        async def run() -> None:
            try:
                async with self.background.slot:
                    await self.ensure(*cls)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - creates keep cold-booting
                self._failed[cls] = time.monotonic()
                log.warning("background template build failed", extra={
                    "class": cls, "error": repr(e)})
            finally:
                self._pending.discard(cls)
        self.background.spawn(run())

    async def _build(self, cls: str, key: str, inputs: dict,
                     launch: LaunchParams) -> Template:
        t0 = time.monotonic()
        lr = self.launcher
        vm_name = f"tpl-{key[:12]}"
        layout = lr.layout(vm_name)
        # Leftovers of a builder that was killed: its QEMU, its VM dir, its temp dirs.
        if (pid := procs.find_ours(lr.state_root).get(vm_name)) is not None:
            await lr.priv.kill_vm(pid, vm_name, lr.state_root)
        shutil.rmtree(layout.dir, ignore_errors=True)
        await asyncio.to_thread(self.store.clean_builds, key)
        build = await asyncio.to_thread(self.store.new_build_dir, key)
        lr.internal.add(vm_name)
        vm: Vm | None = None
        ram = memory.fresh(launch.memory_mib << 20, vm_name)
        try:
            lr.state_root.mkdir(parents=True, exist_ok=True)
            lr.make_dirs(layout)
            await new_overlay(await lr.image(launch.image), layout.overlay)
            # The template NIC's TAP is a transient one (on no bridge): it goes
            # away with the template VM. RAM is a shared memfd: saving then only
            # writes device state, the RAM is written to the build's `memory`
            # file, and clones map that (as a sealed memfd) copy-on-write.
            started = await lr.start_qemu(vm_name, layout, launch, f"crt{key[:12]}",
                                          MemFile(ram, share=True))
            vm = Vm(vm_name, layout, started.pid, launch.accel, launch=launch)
            await lr.connect(vm, lr.boot_timeout(launch.accel))
            boot_ms = int((time.monotonic() - t0) * 1000)
            await _warm_guest(vm)
            save_ms = await save_state(vm.control[0], build / STATE, ignore_shared=True)
            await asyncio.to_thread(memory.save, ram, build / MEMORY, launch.memory_mib << 20)
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
            await asyncio.shield(lr.discard(vm, layout))
            os.close(ram)
            lr.internal.discard(vm_name)
            shutil.rmtree(build, ignore_errors=True)


async def _warm_guest(vm: Vm) -> None:
    """Before a template is saved: run the commands a sandbox's first exec most
    likely needs, so their files are in the guest page cache every clone
    inherits (no virtio-blk reads on the first exec after restore)."""
    agent = vm.control[1]
    for cmd in WARM_CMDS:
        try:
            await agent.exec(ExecRequest(list(cmd), timeout_s=30))
        except Exception as e:  # noqa: BLE001 - a warmer cache is optional
            log.warning("template warm-up %s failed: %r", cmd[0], e)
