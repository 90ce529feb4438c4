"""The benchmark's baseline for the jail: QEMU forked and exec'd directly by
the (root) benchmark process, as before the jail existed: no mount namespace,
no uid drop, no cgroup, no seccomp. Never used outside bench/."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.host_agent.adapters import procs
from services.host_agent.adapters.jail.privileged import LocalPrivileged, VmSpawn
from services.host_agent.adapters.jail.spec import QEMU_BIN
from services.host_agent.adapters.jail.zygote_main import _place_fds


def _without_seccomp(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "-sandbox":
            skip = True
        else:
            out.append(arg)
    return out


def _fork_exec(argv: list[str], fds: list[int], targets: list[int],
               log_index: int | None) -> int:
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - execs or exits
        try:
            os.setsid()
            _place_fds(fds, targets, log_index, errw)
            os.execv(QEMU_BIN, argv)
        except BaseException as e:  # noqa: BLE001
            os.write(errw, repr(e).encode()[:2000])
        os._exit(127)
    os.close(errw)
    err = os.read(errr, 4096)
    os.close(errr)
    if err:
        raise RuntimeError(err.decode(errors="replace"))
    return pid


class Unjailed(LocalPrivileged):
    def __init__(self, root: Path) -> None:
        super().__init__(root / "jail-unused", None)

    async def spawn_vm(self, req: VmSpawn, fds: list[int]) -> int:
        return await asyncio.to_thread(_fork_exec, _without_seccomp(req.argv), fds,
                                       list(req.fd_targets), req.log_index)

    async def prepare_disk(self, disk: Path, uid: int) -> None:
        return None

    async def kill_vm(self, pid: int, vm: str, state_root: Path,
                      term_timeout: float = 3.0) -> bool:
        def ours(p: int) -> bool:
            try:
                return f"corral-{vm}".encode() in Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                return False
        return await procs.kill_if(pid, ours, 1.0)
