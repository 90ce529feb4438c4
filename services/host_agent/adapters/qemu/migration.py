"""VM state in and out of QEMU by migration: save to a file, load into a VM
started with `-incoming defer`. Always over file descriptors (`fd:`): a
jailed QEMU may not spawn (`exec:`) and sees no state files."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from .errors import QmpError, VmBootTimeout, VmError
from .qmp import QmpClient

LOADED = ("paused", "running", "postmigrate", "prelaunch")


async def save_state(qmp: QmpClient, path: Path, timeout: float = 120.0,
                     ignore_shared: bool = False) -> int:
    """Stop the guest and migrate its state into `path`. `ignore_shared`: leave
    out RAM that is a shared file mapping (a template's RAM is its file).
    Returns ms. The VM stays stopped (postmigrate)."""
    t0 = time.monotonic()
    try:
        await qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    except QmpError:
        pass
    await _ignore_shared(qmp, ignore_shared)
    await qmp.execute("stop")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await qmp.getfd("state", fd)
    finally:
        os.close(fd)  # QEMU holds its own copy
    await qmp.execute("migrate", {"uri": "fd:state"})
    deadline = time.monotonic() + timeout
    while True:
        r = await qmp.execute("query-migrate")
        status = r.get("status") if isinstance(r, dict) else None
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            assert isinstance(r, dict)
            raise QmpError(f"migration {status}: {r.get('error-desc', '')}")
        if time.monotonic() > deadline:
            try:
                await qmp.execute("migrate_cancel")
            finally:
                raise VmError("saving VM state timed out")
        await asyncio.sleep(0.01)
    return int((time.monotonic() - t0) * 1000)


async def load_state(qmp: QmpClient, state_fd: int | None, ignore_shared: bool,
                     resumed: bool, deadline: float) -> None:
    """Load the state QEMU inherited on fd `state_fd` (if any) into a VM
    waiting with `-incoming defer`, and wait until it is loaded: the guest
    stays paused. `resumed`: a restarted agent's adoption, where the load may
    have begun already."""
    started = False
    if resumed:
        r = await qmp.execute("query-migrate")
        started = bool(isinstance(r, dict) and r.get("status"))
    if state_fd is not None and not started:
        if ignore_shared:
            await _ignore_shared(qmp, True)
        await qmp.execute("migrate-incoming", {"uri": f"fd:{state_fd}"})
    while True:
        st = await qmp.status()
        if st != "inmigrate":
            break
        if time.monotonic() > deadline:
            raise VmBootTimeout("incoming migration did not finish")
        await asyncio.sleep(0.005)
    if st not in LOADED:
        raise VmError(f"restored VM in state {st}")


async def _ignore_shared(qmp: QmpClient, on: bool) -> None:
    await qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": on}]})
