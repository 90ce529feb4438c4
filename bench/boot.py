"""Boot benchmark: cold boot to guest-agent-ready, exec round trip, RSS, N at once.

Bare column: QemuDriver directly (no gateway, bus or scheduler).
    python bench/boot.py --runs 10 --parallel 10
The through-platform column is a hook: implement `platform_column` (or pass
--through-platform once it is wired) to time the same boot via the REST API.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.host_agent.adapters.guest_image import ensure_image  # noqa: E402
from services.host_agent.adapters.qemu import QemuDriver  # noqa: E402
from services.host_agent.application.ports import ExecRequest, VmSpec  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))], 1)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def _noop(*_a) -> None:
    return None


async def boot_one(d: QemuDriver, sid: str, mem: int, vcpus: int) -> tuple[float, int]:
    t0 = time.monotonic()
    info = await d.start(VmSpec(sid, None, vcpus=vcpus, memory_mib=mem), _noop)
    return (time.monotonic() - t0) * 1000, info.pid


async def bare_column(a: argparse.Namespace, root: Path) -> dict:
    d = QemuDriver(root)
    boots, rss, rtt, py = [], [], [], []
    for i in range(a.runs):
        sid = f"bench-{i}"
        ms, pid = await boot_one(d, sid, a.memory, a.vcpus)
        boots.append(ms)
        for _ in range(a.execs):
            t = time.monotonic()
            await d.exec(sid, ExecRequest(["true"]))
            rtt.append((time.monotonic() - t) * 1000)
        t = time.monotonic()
        r = await d.exec(sid, ExecRequest(["python3", "-c", "print(1)"]))
        assert r.stdout == b"1\n"
        py.append((time.monotonic() - t) * 1000)
        rss.append(rss_mib(pid))
        await d.destroy(sid, {})
    out = {
        "accel": d.accel, "runs": a.runs, "memory_mib": a.memory, "vcpus": a.vcpus,
        "boot_to_agent_ready_ms": {"p50": pct(boots, 50), "p95": pct(boots, 95),
                                   "min": round(min(boots), 1)},
        "exec_true_rtt_ms": {"p50": pct(rtt, 50), "p95": pct(rtt, 95)},
        "exec_python3_c_ms": {"p50": pct(py, 50)},
        "rss_idle_vm_mib": {"p50": pct(rss, 50), "max": max(rss)},
    }
    if a.parallel:
        t0 = time.monotonic()
        sids = [f"bench-par-{i}" for i in range(a.parallel)]
        try:
            res = await asyncio.gather(*(boot_one(d, s, a.memory, a.vcpus) for s in sids),
                                       return_exceptions=True)
            ok = [r for r in res if not isinstance(r, BaseException)]
            out["parallel"] = {"n": a.parallel, "ready": len(ok),
                               "all_ready_s": round(time.monotonic() - t0, 1),
                               "rss_total_mib": round(sum(rss_mib(p) for _, p in ok), 1),
                               "errors": [repr(r) for r in res if isinstance(r, BaseException)]}
        finally:
            for s in sids:
                await d.destroy(s, {})
    await d.close()
    return out


async def platform_column(a: argparse.Namespace) -> dict | None:
    """Hook for the lead: boot through the platform (REST create -> exec answered)."""
    return None


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--execs", type=int, default=20, help="exec round trips per VM")
    ap.add_argument("--parallel", type=int, default=10, help="VMs booted at once (0: skip)")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--through-platform", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    img = await asyncio.to_thread(ensure_image)
    image_ready_s = round(time.monotonic() - t0, 1)
    with tempfile.TemporaryDirectory(prefix="cb-") as tmp:
        result = {"image": img.digest[:16], "image_ready_s": image_ready_s,
                  "bare": await bare_column(a, Path(tmp))}
    if a.through_platform:
        result["platform"] = await platform_column(a)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
