"""Free space where overlays and snapshots are written: a new VM or snapshot
is refused (code no_space) unless it leaves `reserve_mib` free."""
from __future__ import annotations

import os
from pathlib import Path


class DiskRoom:
    def __init__(self, path: Path, reserve_mib: int) -> None:
        self.path = path
        self.reserve_mib = reserve_mib

    def free_mib(self) -> int:
        path = self.path
        while not path.exists() and path != path.parent:
            path = path.parent
        st = os.statvfs(path)
        return (st.f_bavail * st.f_frsize) >> 20

    def lacks(self, need_mib: int) -> str | None:
        """Why `need_mib` more would not fit, or None."""
        free = self.free_mib()
        if free >= need_mib + self.reserve_mib:
            return None
        return (f"{free} MiB free on this host's disk; {need_mib} MiB needed and "
                f"{self.reserve_mib} MiB kept free")
