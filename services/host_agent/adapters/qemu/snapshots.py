"""Live snapshots of running VMs (what forks restore from)."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from services.host_agent.application.ports import SnapshotInfo

from .errors import VmError
from .launcher import Launcher
from .migration import save_state
from .templates import OVERLAY, STATE, LaunchParams, copy_file, key_inputs, write_manifest
from .vm import read_meta

log = logging.getLogger("corral.host_agent.qemu")


async def take_snapshot(launcher: Launcher, sandbox_id: str,
                        dest_dir: str | Path) -> SnapshotInfo:
    """Stop, save state, copy the overlay, continue. The sandbox keeps running;
    `start(VmSpec(..., snapshot_dir=dest_dir))` forks it."""
    vm = launcher.vm(sandbox_id)
    qmp = launcher.qmp(sandbox_id)
    launch = vm.launch or (LaunchParams.from_dict(meta) if (
        meta := read_meta(vm.layout.dir).get("launch")) else None)
    if launch is None:
        raise VmError(f"{sandbox_id}: launch parameters unknown; cannot snapshot")
    dest = Path(dest_dir).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        inputs = await asyncio.to_thread(key_inputs, launch, launcher.argv_shape(launch))
        was = await qmp.status()
        t0 = time.monotonic()
        try:
            await save_state(qmp, tmp / STATE)
            await asyncio.to_thread(copy_file, vm.layout.overlay, tmp / OVERLAY)
        finally:
            if was == "running":
                await qmp.execute("cont")
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
                        launch.memory_mib, m["sizes"][STATE], m["sizes"][OVERLAY], paused_ms)
