"""Host process inspection: find our QEMU processes, wait for and kill them safely."""
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

MARKER = "corral-"


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None  # zombie or kernel thread
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def sandbox_of(argv: list[str], state_root: Path) -> str | None:
    """The sandbox id if argv is a QEMU we started under state_root, else None."""
    if not argv or "qemu-system" not in os.path.basename(argv[0]):
        return None
    try:
        name = argv[argv.index("-name") + 1].split(",", 1)[0]
    except (ValueError, IndexError):
        return None
    if not name.startswith(MARKER):
        return None
    sid = name[len(MARKER):]
    vm_dir = f"{state_root}/{sid}/"
    if not any(vm_dir in a for a in argv):
        return None
    return sid


def is_ours(pid: int, sandbox_id: str, state_root: Path) -> bool:
    argv = cmdline(pid)
    return argv is not None and not is_zombie(pid) and sandbox_of(argv, state_root) == sandbox_id


def find_ours(state_root: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        argv = cmdline(int(d))
        sid = sandbox_of(argv, state_root) if argv else None
        if sid is not None and not is_zombie(int(d)):
            found[sid] = int(d)
    return found


async def wait_exit(pid: int, timeout: float) -> bool:
    """True once pid has exited (or is a zombie); False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return await wait_fd(fd, timeout)
    finally:
        os.close(fd)


async def wait_fd(fd: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(True)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


async def kill_if(pid: int, is_target: Callable[[int], bool], term_timeout: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL, `pid` only while `is_target(pid)` holds (the pidfd
    pins the process, so a reused pid is never hit). True once it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if not is_target(pid):
            return False
        for sig, t in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 10.0)):
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                return True
            if await wait_fd(fd, t):
                return True
        return False
    finally:
        os.close(fd)
