"""Boot benchmark: cold boot to guest-agent-ready, exec round trip, RSS, N at once.

Columns from one run, same image and accel:
- bare: QemuDriver directly (no gateway, bus, scheduler or network);
- fast_start: create -> first exec answered at the driver level, side by side
  for cold boot, restore from a template, and warm-pool assignment (p50/p95
  over --fast-runs), plus --parallel restores at once;
- jail: template restore -> first exec with and without the VM jail,
  interleaved (bench/jail.py);
- platform: the whole stack as processes, REST create?wait=true then the first
  exec answered (includes TAP + nft set-up), plus exec round trips via REST.
    python bench/boot.py --runs 10 --parallel 10 --fast-runs 20 [--bare-only]
        [--skip-fast] [--jail-only]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.application.ports import ExecRequest, VmSpec

import stages
from measure import create_to_first_exec, dist, noop, pct, rss_mib

if TYPE_CHECKING:
    import httpx

    from corral.devstack import DevStack


async def boot_one(d: QemuDriver, sid: str, mem: int, vcpus: int) -> tuple[float, int]:
    t0 = time.monotonic()
    info = await d.start(VmSpec(sid, None, vcpus=vcpus, memory_mib=mem), noop)
    assert info.pid is not None
    return (time.monotonic() - t0) * 1000, info.pid


async def bare_column(a: argparse.Namespace, root: Path) -> dict:
    d = QemuDriver(root, templates=False)  # this column is the cold path
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


async def fast_column(a: argparse.Namespace, root: Path) -> dict:
    """Cold boot vs template restore vs warm-pool assignment, create -> first exec."""
    cls = ("default", a.vcpus, a.memory)
    d = QemuDriver(root / "vms", template_root=root / "templates")
    out: dict = {"runs": a.fast_runs, "memory_mib": a.memory, "vcpus": a.vcpus}
    try:
        t0 = time.monotonic()
        tpl = await d.ensure_template(*cls)
        out["template"] = {"build_s": round(time.monotonic() - t0, 1),
                           "save_ms": tpl.manifest.get("save_ms"),
                           "state_kib": round(tpl.manifest["sizes"]["state"] / 1024),
                           "memory_file_mib": round(tpl.manifest["sizes"]["memory"] / 2**20),
                           "overlay_kib": round(tpl.manifest["sizes"]["overlay.qcow2"] / 1024)}
        modes: dict[str, list[float]] = {"cold": [], "restore": []}
        mem: dict[str, dict] = {"cold": {}, "restore": {}}
        for mode, cold in (("cold", True), ("restore", False)):
            for i in range(a.fast_runs):
                sid = f"fs-{mode}-{i}"
                ms, got = await create_to_first_exec(
                    d, VmSpec(sid, None, vcpus=a.vcpus, memory_mib=a.memory, cold_boot=cold),
                    mem[mode])
                assert got == mode, (got, mode)
                modes[mode].append(ms)
                await d.destroy(sid, {})
        out["cold_create_to_first_exec_ms"] = dist(modes["cold"])
        out["restore_create_to_first_exec_ms"] = dist(modes["restore"])
        out["vm_memory_after_first_exec_mib"] = {
            m: {"rss_p50": pct(v["rss"], 50), "pss_p50": pct(v["pss"], 50)}
            for m, v in mem.items()}
        if a.parallel:
            sids = [f"fs-par-{i}" for i in range(a.parallel)]
            t0 = time.monotonic()
            try:
                res = await asyncio.gather(*(create_to_first_exec(
                    d, VmSpec(s, None, vcpus=a.vcpus, memory_mib=a.memory)) for s in sids),
                    return_exceptions=True)
                ok = [r for r in res if not isinstance(r, BaseException)]
                out["restore_parallel"] = {
                    "n": a.parallel, "ok": len(ok),
                    "all_first_exec_s": round(time.monotonic() - t0, 2),
                    "per_vm_ms": dist([ms for ms, _ in ok]) if ok else None,
                    "modes": sorted({m for _, m in ok}),
                    "errors": [repr(r) for r in res if isinstance(r, BaseException)]}
            finally:
                for s in sids:
                    await d.destroy(s, {})
    finally:
        await d.close()
    p = QemuDriver(root / "poolvms", template_root=root / "templates", warm_pool={cls: 1})
    try:
        pool_ms = []
        for i in range(a.fast_runs):
            await p.wait_pool_ready(300)
            sid = f"fs-pool-{i}"
            ms, got = await create_to_first_exec(
                p, VmSpec(sid, None, vcpus=a.vcpus, memory_mib=a.memory))
            assert got == "pool", got
            pool_ms.append(ms)
            await p.destroy(sid, {})
        out["pool_create_to_first_exec_ms"] = dist(pool_ms)
        out["pool_stats"] = p.pool_stats()
    finally:
        await p.close()
    c50 = out["cold_create_to_first_exec_ms"]["p50"]
    out["speedup_p50"] = {"restore": round(c50 / out["restore_create_to_first_exec_ms"]["p50"], 1),
                          "pool": round(c50 / out["pool_create_to_first_exec_ms"]["p50"], 1)}
    return out


PLATFORM_MODES = {  # host agent settings per mode; one stack each, same image and accel
    "cold": {"CORRAL_TEMPLATES": "false", "CORRAL_PREBUILD_TEMPLATES": ""},
    "restore": {"CORRAL_TEMPLATES": "true"},
    "pool": {"CORRAL_TEMPLATES": "true", "CORRAL_WARM_POOL": "default/1/256=2"},
}


def _last_heartbeat(st: DevStack) -> dict:
    import nats
    from nats.js.api import DeliverPolicy

    async def go() -> dict:
        nc = await nats.connect(st.nats_url, **st.bus_login("ops"))
        js = nc.jetstream()
        sub = await js.subscribe("corral.evt.host.*.HostHeartbeat", stream="CORRAL_HOST",
                                 ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        try:
            return json.loads((await sub.next_msg(timeout=5)).data)
        finally:
            await nc.close()
    return asyncio.run(go())


def _wait_warm(st: DevStack, mode: str, timeout_s: float = 240, claims: int = 0) -> None:
    """Restore needs its template, the pool its VMs: measure the steady state.
    A heartbeat counts only once it has seen the `claims` pool creates so far
    (hits + misses): one sent before the last create would show a full pool."""
    deadline = time.monotonic() + timeout_s
    while mode != "cold" and time.monotonic() < deadline:
        if mode == "pool":
            assert st.nats_url is not None
            pools = _last_heartbeat(st).get("pools", {}).values()
            seen = sum(p.get("hits", 0) + p.get("misses", 0) for p in pools)
            if pools and seen >= claims and \
                    all(p.get("ready", 0) >= p.get("target", 1) for p in pools):
                return
        elif '"template ready' in (st.state_dir / "logs" / "host_agent.log").read_text():
            return
        time.sleep(0.5)


def _start_mode(c: httpx.Client, sid: str) -> str | None:
    items = c.get(f"/v1/sandboxes/{sid}/events", params={"limit": 100}).json()["items"]
    return next((e.get("start_mode") for e in items if e["type"] == "SandboxStarted"), None)


def _destroy_and_wait(c: httpx.Client, sid: str, timeout_s: float = 60) -> None:
    assert c.delete(f"/v1/sandboxes/{sid}").status_code in (200, 202, 204)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = c.get(f"/v1/sandboxes/{sid}")
        if r.status_code == 404 or r.json().get("state") == "destroyed":
            return
        time.sleep(0.05)
    raise TimeoutError(f"{sid} not destroyed within {timeout_s}s")


def _platform_mode(a: argparse.Namespace, mode: str) -> dict:
    import secrets
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from corral.devstack import DevStack

    env = {"CORRAL_BRIDGE": "crlb" + secrets.token_hex(2),
           "CORRAL_SUBNET": f"198.18.{secrets.randbelow(250) + 1}.0/24",
           "CORRAL_CAPACITY_VCPUS": "64", "CORRAL_MAX_SANDBOXES": "32",
           "CORRAL_LOG_LEVEL": "INFO", **PLATFORM_MODES[mode]}
    with tempfile.TemporaryDirectory(prefix="cbp-") as tmp:
        st = DevStack(Path(tmp), driver="qemu", extra_env=env)
        st.start(timeout_s=180)
        assert st.creds is not None
        c = httpx.Client(base_url=st.api_url, timeout=300,
                         headers={"Authorization": f"Bearer {st.creds.api_key}"})
        spec = {"memory_mib": a.memory, "vcpus": a.vcpus}
        try:
            _wait_warm(st, mode)
            first, rtt, modes, runs = [], [], [], []
            for i in range(a.platform_runs):
                if mode == "pool":
                    _wait_warm(st, mode, 30, claims=i)  # sequential creates: pool refilled
                w0, t0 = time.time(), time.monotonic()
                r = c.post("/v1/sandboxes?wait=true", json=spec)
                assert r.status_code == 201, r.text
                w1 = time.time()
                sid = r.json()["id"]
                r = c.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]})
                assert r.json()["exit_code"] == 0
                first.append((time.monotonic() - t0) * 1000)
                runs.append(stages.durations(stages.marks(st.state_dir / "logs", sid),
                                             w0, w1, time.time()))
                for _ in range(a.execs if mode == "restore" else 0):
                    t = time.monotonic()
                    c.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]})
                    rtt.append((time.monotonic() - t) * 1000)
                modes.append(_start_mode(c, sid))
                _destroy_and_wait(c, sid)  # run i's teardown never overlaps run i+1
            out = {"runs": len(first), "start_modes": {m: modes.count(m) for m in set(modes)},
                   "create_to_first_exec_ms": {"p50": pct(first, 50), "p95": pct(first, 95),
                                               "p99": pct(first, 99),
                                               "min": round(min(first), 1)},
                   "each_ms": [round(x) for x in first],
                   "stages_ms": stages.summary(runs)}
            if rtt:
                out["exec_true_rtt_ms"] = {"p50": pct(rtt, 50), "p95": pct(rtt, 95)}
            if a.parallel:
                _wait_warm(st, mode, 60)

                def one(_: int) -> tuple[httpx.Response, bool, float]:
                    t = time.monotonic()
                    r = c.post("/v1/sandboxes?wait=true", json=spec)
                    ok = r.status_code == 201 and c.post(
                        f"/v1/sandboxes/{r.json()['id']}/exec",
                        json={"cmd": ["true"]}).json()["exit_code"] == 0
                    return r, ok, (time.monotonic() - t) * 1000
                t0 = time.monotonic()
                with ThreadPoolExecutor(a.parallel) as pool:
                    res = list(pool.map(one, range(a.parallel)))
                each = [ms for _, ok, ms in res if ok]
                out["parallel"] = {"n": a.parallel, "ready": len(each),
                                   "all_ready_s": round(time.monotonic() - t0, 1),
                                   "per_create_ms": {"p50": pct(each, 50), "p95": pct(each, 95)}}
                for r, _, _ in res:
                    if r.status_code == 201:
                        _destroy_and_wait(c, r.json()["id"])
            return out
        finally:
            st.stop()


async def platform_column(a: argparse.Namespace) -> dict[str, Any]:
    """Through the platform, per start mode: REST create?wait=true -> first exec."""
    out = {}
    for mode in a.platform_modes.split(","):
        # Same start for every mode: the previous stack's writeback drained.
        await asyncio.to_thread(os.sync)
        await asyncio.sleep(3)
        out[mode] = await asyncio.to_thread(_platform_mode, a, mode)
    return out


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--execs", type=int, default=20, help="exec round trips per VM")
    ap.add_argument("--parallel", type=int, default=10, help="VMs booted at once (0: skip)")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--bare-only", action="store_true", help="skip the platform column")
    ap.add_argument("--fast-runs", type=int, default=20,
                    help="runs per mode in the fast_start column")
    ap.add_argument("--skip-fast", action="store_true", help="skip the fast_start column")
    ap.add_argument("--skip-bare", action="store_true", help="skip the bare cold column")
    ap.add_argument("--platform-runs", type=int, default=20)
    ap.add_argument("--platform-modes", default="cold,restore,pool")
    ap.add_argument("--jail-runs", type=int, default=20,
                    help="restores per side, jailed vs not (0: skip)")
    ap.add_argument("--jail-only", action="store_true", help="only the jail column")
    a = ap.parse_args(argv)
    if a.jail_only:
        a.skip_bare = a.skip_fast = a.bare_only = True
    t0 = time.monotonic()
    img = await asyncio.to_thread(ensure_image)
    image_ready_s = round(time.monotonic() - t0, 1)
    with tempfile.TemporaryDirectory(prefix="cb-") as tmp:
        result: dict[str, Any] = {"image": img.digest[:16], "image_ready_s": image_ready_s}
        if not a.skip_bare:
            result["bare"] = await bare_column(a, Path(tmp) / "bare")
        if not a.skip_fast:
            result["fast_start"] = await fast_column(a, Path(tmp) / "fast")
        if a.jail_runs:
            from jail import jail_column
            result["jail"] = await jail_column(a, Path(tmp) / "jail")
    if not a.bare_only:
        plat = result["platform"] = await platform_column(a)
        p50 = {m: v["create_to_first_exec_ms"]["p50"] for m, v in plat.items()}
        cmp: dict = {}
        if "bare" in result and "cold" in p50:
            bare_p50 = result["bare"]["boot_to_agent_ready_ms"]["p50"]
            cmp["platform_cold_over_bare_p50_ms"] = round(p50["cold"] - bare_p50, 1)
            cmp["platform_cold_vs_bare_ratio_p50"] = round(p50["cold"] / bare_p50, 3)
        for m in ("restore", "pool"):
            if m in p50 and "cold" in p50:
                cmp[f"cold_over_{m}_speedup_p50"] = round(p50["cold"] / p50[m], 1)
        result["comparison"] = cmp
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
