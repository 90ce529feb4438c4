"""What one VM's jail holds, as the zygote receives it."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

QEMU_BIN = "/usr/bin/qemu-system-x86_64"
# (name, major, minor, mode) of the device nodes in every jail's /dev
BASE_DEVICES: tuple[tuple[str, int, int, int], ...] = (
    ("null", 1, 3, 0o666), ("zero", 1, 5, 0o666), ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666))
KVM_DEVICE = ("kvm", 10, 232, 0o660)  # QEMU 7.2 cannot take /dev/kvm as an fd
FIRST_FD = 3


@dataclass(frozen=True)
class JailSpec:
    vm: str  # the VM's name (logs)
    uid: int
    gid: int
    mountpoint: str  # an empty host dir: the jail's tmpfs root is mounted on it
    argv: list[str]
    binds: list[tuple[str, bool]] = field(default_factory=list)  # (host path, writable)
    devices: list[tuple[str, int, int, int]] = field(default_factory=lambda: list(BASE_DEVICES))
    cgroup_procs: list[str] = field(default_factory=list)  # cgroup.procs files to join
    fd_targets: list[int] = field(default_factory=list)  # passed fd i -> this number
    log_index: int | None = None  # which passed fd is stdout/stderr
    exe: str = QEMU_BIN
    nofile: int = 4096

    def __post_init__(self) -> None:
        if self.uid <= 0 or self.gid <= 0:
            raise ValueError("a jail never runs as root")
        for path, _rw in self.binds:
            if not os.path.isabs(path) or os.path.normpath(path) != path or path == "/":
                raise ValueError(f"bind {path!r} must be an absolute, normal, non-root path")
        if not Path(self.mountpoint).is_absolute():
            raise ValueError("the mountpoint must be absolute")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class FdPlan:
    """The file descriptors a VM's QEMU gets, numbered from 3 in the order added
    (the numbers its command line names)."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.log_index: int | None = None

    def add(self, fd: int) -> int:
        self.fds.append(fd)
        return FIRST_FD + len(self.fds) - 1

    def log(self, fd: int) -> None:
        self.log_index = len(self.fds)
        self.fds.append(fd)

    @property
    def targets(self) -> list[int]:
        return [FIRST_FD + i for i in range(len(self.fds))]
