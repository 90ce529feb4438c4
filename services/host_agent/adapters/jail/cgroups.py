"""One cgroup per VM with CPU, memory, pids and IO limits: cgroup v2 where
the host has it, v1 (one hierarchy per controller) where it does not."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("corral.host_agent.jail")
ROOT = Path("/sys/fs/cgroup")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
V1_CONTROLLERS = ("memory", "cpu", "pids", "blkio")
PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpus: float  # CPU time as a number of CPUs
    pids: int
    io_device: str | None = None  # "major:minor" of the disk holding the VM's files
    io_bps: int = 0  # read and write bytes/s on it (0: none)
    io_iops: int = 0


def device_of(path: Path) -> str:
    """major:minor of the whole disk holding `path` (throttles want the disk)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    parent = Path(f"/sys/dev/block/{major}:{minor}/..").resolve() / "dev"
    if Path(f"/sys/dev/block/{major}:{minor}/partition").exists() and parent.exists():
        return parent.read_text().strip()
    return f"{major}:{minor}"


class Cgroups:
    def __init__(self, parent: str = "corral", root: Path = ROOT) -> None:
        if not NAME_RE.match(parent):
            raise ValueError(f"bad cgroup parent {parent!r}")
        self.parent, self.root = parent, root
        self.v2 = (root / "cgroup.controllers").exists()

    def available(self) -> bool:
        """The controllers exist and their trees are writable here (a container's
        cgroup mount is read-only unless the host's tree is given to it)."""
        if self.v2:
            return ("memory" in (self.root / "cgroup.controllers").read_text().split()
                    and os.access(self.root, os.W_OK))
        need = [self.root / c for c in ("memory", "cpu", "pids")]
        return all(d.is_dir() and os.access(d, os.W_OK) for d in need)

    def _dirs(self, vm: str) -> list[Path]:
        if not NAME_RE.match(vm):
            raise ValueError(f"bad cgroup name {vm!r}")
        if self.v2:
            return [self.root / self.parent / vm]
        return [self.root / c / self.parent / vm for c in V1_CONTROLLERS
                if (self.root / c).is_dir()]

    def create(self, vm: str, limits: Limits) -> list[str]:
        """Make the VM's cgroup(s) with `limits`; the cgroup.procs files to join."""
        if self.v2:
            self._enable(self.root, self.root / self.parent)
        dirs = self._dirs(vm)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        try:
            if self.v2:
                self._limits_v2(dirs[0], limits)
            else:
                self._limits_v1(vm, limits)
        except OSError:
            self.remove(vm)
            raise
        return [str(d / "cgroup.procs") for d in dirs]

    def _enable(self, *levels: Path) -> None:
        for level in levels:
            level.mkdir(exist_ok=True)
            want = {"memory", "cpu", "pids", "io"} & set(
                (level / "cgroup.controllers").read_text().split())
            _write(level / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(want)))

    def _limits_v2(self, d: Path, lim: Limits) -> None:
        _write(d / "memory.max", str(lim.memory_bytes))
        _write(d / "memory.swap.max", "0", missing_ok=True)
        _write(d / "cpu.max", f"{int(lim.cpus * PERIOD_US)} {PERIOD_US}")
        _write(d / "pids.max", str(lim.pids))
        if lim.io_device and (lim.io_bps or lim.io_iops):
            _write(d / "io.max", f"{lim.io_device} rbps={lim.io_bps or 'max'} "
                                 f"wbps={lim.io_bps or 'max'} riops={lim.io_iops or 'max'} "
                                 f"wiops={lim.io_iops or 'max'}", missing_ok=True)

    def _limits_v1(self, vm: str, lim: Limits) -> None:
        mem = self.root / "memory" / self.parent / vm
        _write(mem / "memory.limit_in_bytes", str(lim.memory_bytes))
        _write(mem / "memory.memsw.limit_in_bytes", str(lim.memory_bytes), missing_ok=True)
        cpu = self.root / "cpu" / self.parent / vm
        _write(cpu / "cpu.cfs_period_us", str(PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(int(lim.cpus * PERIOD_US)))
        _write(self.root / "pids" / self.parent / vm / "pids.max", str(lim.pids))
        blk = self.root / "blkio" / self.parent / vm
        if lim.io_device and blk.is_dir():
            for kind, value in (("bps", lim.io_bps), ("iops", lim.io_iops)):
                for op in ("read", "write"):
                    if value:
                        _write(blk / f"blkio.throttle.{op}_{kind}_device",
                               f"{lim.io_device} {value}", missing_ok=True)

    def remove(self, vm: str) -> None:
        """Remove the VM's cgroup(s) (its processes must be gone)."""
        for d in self._dirs(vm):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:  # still busy: a zombie not yet reaped
                log.warning("cgroup %s not removed: %s", d, e)

    def names(self) -> set[str]:
        """The VM cgroups that exist (to clean up after a crash)."""
        base = self.root / (self.parent if self.v2 else f"memory/{self.parent}")
        try:
            return {p.name for p in base.iterdir() if p.is_dir()}
        except FileNotFoundError:
            return set()

    def stats(self, vm: str) -> dict[str, int]:
        """Memory limit and peak, pids limit, and OOM kills (for tests and ops)."""
        if self.v2:
            d = self._dirs(vm)[0]
            events = dict(line.split() for line in (d / "memory.events").read_text()
                          .splitlines())
            peak = d / "memory.peak"
            return {"memory_limit": _int(d / "memory.max"), "pids_limit": _int(d / "pids.max"),
                    "memory_peak": _int(peak) if peak.exists() else _int(d / "memory.current"),
                    "oom_kills": int(events.get("oom_kill", 0))}
        mem = self.root / "memory" / self.parent / vm
        oom = dict(line.split() for line in (mem / "memory.oom_control").read_text()
                   .splitlines())
        return {"memory_limit": _int(mem / "memory.limit_in_bytes"),
                "memory_peak": _int(mem / "memory.max_usage_in_bytes"),
                "pids_limit": _int(self.root / "pids" / self.parent / vm / "pids.max"),
                "oom_kills": int(oom.get("oom_kill", 0))}


def _write(path: Path, value: str, missing_ok: bool = False) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        if not missing_ok:
            raise


def _int(path: Path) -> int:
    text = path.read_text().strip()
    return -1 if text == "max" else int(text)

