"""Measurement helpers shared by the benchmarks."""
from __future__ import annotations

import time
from pathlib import Path

from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.application.ports import ExecRequest, VmSpec


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))], 1)


def _proc_kib_as_mib(path: str, field: str) -> float:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def rss_mib(pid: int) -> float:
    return _proc_kib_as_mib(f"/proc/{pid}/status", "VmRSS:")


def pss_mib(pid: int) -> float:
    """Proportional set size: pages shared with other VMs (a template's RAM
    file in the page cache) count once across them."""
    return _proc_kib_as_mib(f"/proc/{pid}/smaps_rollup", "Pss:")


async def noop(*_a: object) -> None:
    return None


async def create_to_first_exec(d: QemuDriver, spec: VmSpec, mem: dict | None = None
                                ) -> tuple[float, str]:
    t0 = time.monotonic()
    info = await d.start(spec, noop)
    r = await d.exec(spec.sandbox_id, ExecRequest(["true"]))
    assert r.exit_code == 0
    ms = (time.monotonic() - t0) * 1000
    if mem is not None:
        assert info.pid is not None
        mem.setdefault("rss", []).append(rss_mib(info.pid))
        mem.setdefault("pss", []).append(pss_mib(info.pid))
    return ms, info.start_mode


def dist(xs: list[float]) -> dict:
    return {"p50": pct(xs, 50), "p95": pct(xs, 95), "min": round(min(xs), 1),
            "max": round(max(xs), 1), "n": len(xs)}


