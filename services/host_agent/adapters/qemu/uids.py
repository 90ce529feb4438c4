"""The uid (and gid) each VM's QEMU runs as: unique among this host's live VMs."""
from __future__ import annotations

import zlib
from pathlib import Path

from ..jail.privileged import UID_RANGE


class UidPool:
    def __init__(self, base: int = UID_RANGE[0], count: int = UID_RANGE[1]) -> None:
        self.base, self.count = base, count
        self._by_vm: dict[str, int] = {}

    def allocate(self, vm: str) -> int:
        if vm in self._by_vm:
            return self._by_vm[vm]
        used = set(self._by_vm.values())
        start = zlib.crc32(vm.encode()) % self.count
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            if uid not in used:
                self._by_vm[vm] = uid
                return uid
        raise RuntimeError("no VM uid left")

    def adopt(self, vm: str, pid: int) -> None:
        """A running VM found after a restart keeps the uid it runs as."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        uid = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("Uid:")), None)
        if uid is not None and self.base <= uid < self.base + self.count:
            self._by_vm[vm] = uid

    def release(self, vm: str) -> None:
        self._by_vm.pop(vm, None)

    def of(self, vm: str) -> int | None:
        return self._by_vm.get(vm)
