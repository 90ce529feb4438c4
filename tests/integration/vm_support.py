"""Shared by the VM and network integration tests."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.host_agent.adapters import procs
from services.host_agent.adapters.images import InMemoryRecorder

from ..prereq import unavailable


async def kill_ours(pid: int, name: str, state_root: Path) -> bool:
    """A test's leftover QEMU, only if it still is VM `name` under `state_root`."""
    return await procs.kill_if(pid, lambda p: procs.is_ours(p, name, state_root))


# In-memory stand-in for the host agent's durable resource records (build VMs use it too)
Recorder = InMemoryRecorder


def require(tools: tuple[str, ...], root: bool = False) -> None:
    """Skip locally when tools are missing; in CI that is a failure."""
    missing = [t for t in tools if shutil.which(t) is None]
    if root and os.geteuid() != 0:
        missing.append("root")
    if not missing:
        return
    unavailable(", ".join(missing))
