"""Control-plane throughput, printing JSON.

(a) scheduler: the Scheduler use cases in-process on a real store (SQLite by
    default), 50 registered hosts heartbeating (liveness), N placements one
    after another: placements/s and decision latency p50/p99;
(b) platform: the whole stack as processes on the FAKE driver (no VMs), N
    creates through REST at concurrency C: accepted/s, reached-running/s and
    create-call latency.

    python bench/control_plane.py [--hosts 50] [--placements 2000]
        [--creates 400] [--concurrency 20] [--skip-platform]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.eventstore import store_env
from contracts.host import HostCapacity, HostHeartbeat, HostRegistered
from contracts.sandbox import SandboxRequested, SandboxSpec
from services.scheduler.application.liveness import Liveness
from services.scheduler.application.scheduler import Scheduler

from measure import pct


def scheduler_column(a: argparse.Namespace, root: Path) -> dict:
    app = Scheduler(store_env(a.store, root, "scheduler"))
    live = Liveness()
    cap = HostCapacity(vcpus=10_000, memory_mib=10_000_000, max_sandboxes=10_000)
    hosts = [str(uuid.uuid4()) for _ in range(a.hosts)]
    for h in hosts:
        app.register(HostRegistered(op_id="op", host_id=h, hostname=h[:8], capacity=cap,
                                    accel="kvm", agent_version="bench"))
    stop = threading.Event()

    def heartbeats() -> None:  # as the scheduler's heartbeat watcher does, 2 s each
        seq = 0
        while not stop.is_set():
            for h in hosts:
                hb = HostHeartbeat(op_id="op", host_id=h, seq=seq, accel="kvm", capacity=cap,
                                   running=0, used_vcpus=0, used_memory_mib=0, interval_s=2)
                if app.accepts_heartbeats(hb.host_id):
                    live.beat(h, hb.interval_s)
            seq += 1
            stop.wait(2.0 / max(1, len(hosts)) * len(hosts))
    t = threading.Thread(target=heartbeats, daemon=True)
    t.start()
    while len(live.alive()) < len(hosts):
        time.sleep(0.01)
    lat = []
    t0 = time.perf_counter()
    for _ in range(a.placements):
        req = SandboxRequested(op_id="op", org_id="o", sandbox_id=str(uuid.uuid4()),
                               spec=SandboxSpec(), request_hash="h")
        s = time.perf_counter()
        _, new = app.place(req, live.alive())
        lat.append((time.perf_counter() - s) * 1000)
        assert new
    took = time.perf_counter() - t0
    stop.set()
    app.close()
    return {"hosts": a.hosts, "placements": a.placements, "store": a.store,
            "placements_per_s": round(a.placements / took, 1),
            "decision_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": round(max(lat), 1)}}


def platform_column(a: argparse.Namespace) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from corral.devstack import DevStack
    env = {"CORRAL_QUOTA_CREATES_PER_MINUTE": "1000000", "CORRAL_QUOTA_MAX_LIVE": "1000000",
           "CORRAL_MAX_SANDBOXES": "100000", "CORRAL_CAPACITY_VCPUS": "100000",
           "CORRAL_CAPACITY_MEMORY_MIB": "100000000"}
    with tempfile.TemporaryDirectory(prefix="cpb-") as tmp:
        st = DevStack(Path(tmp), driver="fake", extra_env=env)
        st.start(timeout_s=120)
        assert st.creds is not None
        headers = {"Authorization": f"Bearer {st.creds.api_key}"}
        limits = httpx.Limits(max_connections=a.concurrency)
        c = httpx.Client(base_url=st.api_url, headers=headers, timeout=60, limits=limits)
        try:
            lat: list[float] = []
            ids: list[str] = []

            def one(_: int) -> None:
                s = time.perf_counter()
                r = c.post("/v1/sandboxes", json={"ttl_seconds": 3600})
                lat.append((time.perf_counter() - s) * 1000)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            t0 = time.perf_counter()
            with ThreadPoolExecutor(a.concurrency) as pool:
                list(pool.map(one, range(a.creates)))
            accepted_s = time.perf_counter() - t0
            pending = set(ids)
            deadline = time.perf_counter() + 600
            while pending and time.perf_counter() < deadline:
                cursor: str | None = None
                running = set()
                while True:
                    params = {"state": "running", "limit": "500"}
                    if cursor:
                        params["cursor"] = cursor
                    page = c.get("/v1/sandboxes", params=params).json()
                    running |= {i["id"] for i in page["items"]}
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
                pending -= running
                time.sleep(0.2)
            all_s = time.perf_counter() - t0
            return {"creates": a.creates, "concurrency": a.concurrency,
                    "accepted_per_s": round(a.creates / accepted_s, 1),
                    "reached_running": a.creates - len(pending),
                    "running_per_s": round((a.creates - len(pending)) / all_s, 1),
                    "create_call_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)}}
        finally:
            c.close()
            st.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--placements", type=int, default=2000)
    ap.add_argument("--store", default="sqlite")
    ap.add_argument("--creates", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--skip-platform", action="store_true")
    a = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="cps-") as tmp:
        out["scheduler"] = scheduler_column(a, Path(tmp))
    if not a.skip_platform:
        out["platform"] = platform_column(a)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
