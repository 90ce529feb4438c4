"""What the jail costs at create time: template restore -> first exec, with
the jail (own uid, mount namespace, cgroup with limits, seccomp, no caps)
and without it (bench/unjailed.py), interleaved run by run in one process so
both see the same machine."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from services.host_agent.adapters.jail.privileged import VmSpawn
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.application.ports import VmSpec

from measure import create_to_first_exec, dist
from unjailed import Unjailed


async def jail_column(a: argparse.Namespace, root: Path) -> dict:
    cls = ("default", a.vcpus, a.memory)
    drivers = {"jailed": QemuDriver(root / "jailed", template_root=root / "templates"),
               "unjailed": QemuDriver(root / "unjailed", template_root=root / "templates",
                                      privileged=Unjailed(root))}
    runs: dict[str, list[float]] = {k: [] for k in drivers}
    spawns: dict[str, list[float]] = {k: [] for k in drivers}
    for name, d in drivers.items():
        _time_spawns(d, spawns[name])
    try:
        for name, d in drivers.items():  # the shared template, then a warm-up each
            await d.ensure_template(*cls)
            await create_to_first_exec(d, VmSpec(f"jw-{name}", None, vcpus=a.vcpus,
                                                 memory_mib=a.memory))
            await d.destroy(f"jw-{name}", {})
        for xs in spawns.values():
            xs.clear()  # template builds and warm-ups are not measured
        for i in range(a.jail_runs):
            order = ("jailed", "unjailed") if i % 2 == 0 else ("unjailed", "jailed")
            for name in order:
                sid = f"j-{name[0]}-{i}"
                ms, mode = await create_to_first_exec(drivers[name], VmSpec(
                    sid, None, vcpus=a.vcpus, memory_mib=a.memory))
                assert mode == "restore", mode
                runs[name].append(round(ms, 1))
                await drivers[name].destroy(sid, {})
    finally:
        for d in drivers.values():
            await d.close()
    j, u = dist(runs["jailed"]), dist(runs["unjailed"])
    return {"mode": "restore", "runs": a.jail_runs,
            "jailed_create_to_first_exec_ms": {**j, "per_run": runs["jailed"]},
            "unjailed_create_to_first_exec_ms": {**u, "per_run": runs["unjailed"]},
            "jail_cost_ms": {"p50": round(j["p50"] - u["p50"], 1),
                             "p95": round(j["p95"] - u["p95"], 1)},
            "spawn_ms": {k: {**dist(v), "per_run": v} for k, v in spawns.items()}}


def _time_spawns(d: QemuDriver, out: list[float]) -> None:
    """Record how long each QEMU spawn takes (jail set-up, cgroup, fork, exec)."""
    priv = d.launcher.priv
    spawn = priv.spawn_vm

    async def timed(req: VmSpawn, fds: list[int]) -> int:
        t0 = time.perf_counter()
        try:
            return await spawn(req, fds)
        finally:
            out.append(round((time.perf_counter() - t0) * 1000, 2))
    priv.spawn_vm = timed  # type: ignore[method-assign]
