"""Control-plane throughput, printing JSON.

(a) scheduler: the Scheduler use cases in-process on a real store (SQLite by
    default), 50 registered hosts heartbeating (liveness), N placements one
    after another: placements/s and decision latency p50/p99;
(b) platform: the whole stack as processes on the FAKE driver (no VMs), N
    creates through REST at concurrency C: accepted/s, reached-running/s and
    create-call latency.

    python bench/control_plane.py [--hosts 50] [--placements 2000]
        [--creates 400] [--concurrency 20] [--store sqlite|postgresql://...]
        [--gateways 1|2|3] [--schedulers 1|2|3] [--skip-platform]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from common.eventstore import store_env
from common.natsserver import free_port
from contracts.host import HostCapacity, HostHeartbeat, HostRegistered
from contracts.sandbox import SandboxRequested, SandboxSpec
from corral.devstack import DevStack
from services.scheduler.application.liveness import Liveness
from services.scheduler.application.scheduler import Scheduler

from measure import pct


def own_schema(store: str, column: str) -> str:
    """Each column its own PostgreSQL schema (a fresh one per run); SQLite
    stores already live in each column's own directory."""
    if store == "sqlite":
        return store
    base, _, query = store.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("schema=")]
    params.append(f"schema=cpb_{column}_{uuid.uuid4().hex[:8]}")
    return base + "?" + "&".join(params)


def scheduler_column(a: argparse.Namespace, root: Path) -> dict:
    app = Scheduler(store_env(own_schema(a.store, "sched"), root, "scheduler"))
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


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_stack(a: argparse.Namespace, tmp: str) -> tuple[DevStack, list[str]]:
    env = {"CORRAL_QUOTA_CREATES_PER_MINUTE": "1000000", "CORRAL_QUOTA_MAX_LIVE": "1000000",
           "CORRAL_MAX_SANDBOXES": "100000", "CORRAL_CAPACITY_VCPUS": "100000",
           "CORRAL_CAPACITY_MEMORY_MIB": "100000000"}
    st = DevStack(Path(tmp), driver="fake", extra_env=env, store=own_schema(a.store, "stack"))
    st.start(timeout_s=120)
    urls = [st.api_url]
    for i in range(1, a.gateways):
        port = free_port()
        st.start_service("api_gateway", instance=str(i), name=f"api_gateway-{i}",
                         env={"CORRAL_HTTP_PORT": str(port)})
        urls.append(f"http://127.0.0.1:{port}")
    for i in range(1, a.schedulers):
        st.start_service("scheduler", instance=str(i), name=f"scheduler-{i}")
    st.wait_ready(120, api_urls=urls)
    return st, urls


def platform_column(a: argparse.Namespace) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix="cpb-") as tmp:
        st, urls = _start_stack(a, tmp)
        assert st.creds is not None
        headers = {"Authorization": f"Bearer {st.creds.api_key}"}
        limits = httpx.Limits(max_connections=a.concurrency)
        clients = [httpx.Client(base_url=u, headers=headers, timeout=60, limits=limits)
                   for u in urls]
        c = clients[0]
        procs = {n: p.pid for n, p in st.procs.items()}
        if st.nats and st.nats.proc:
            procs["nats-server"] = st.nats.proc.pid
        cpu0 = {n: _cpu_s(pid) for n, pid in procs.items()}
        try:
            lat: list[float] = []
            ids: list[str] = []

            def one(i: int) -> None:
                s = time.perf_counter()
                r = clients[i % len(clients)].post("/v1/sandboxes", json={"ttl_seconds": 3600})
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
                pending -= _running(c)
                time.sleep(0.2)
            all_s = time.perf_counter() - t0
            cpu = {n: round(_cpu_s(pid) - cpu0[n], 1) for n, pid in procs.items()}
            return {"creates": a.creates, "concurrency": a.concurrency, "store": a.store,
                    "gateways": a.gateways, "schedulers": a.schedulers,
                    "accepted_per_s": round(a.creates / accepted_s, 1),
                    "reached_running": a.creates - len(pending),
                    "running_per_s": round((a.creates - len(pending)) / all_s, 1),
                    "create_call_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95),
                                       "p99": pct(lat, 99)},
                    "wall_s": round(all_s, 1),
                    # CPU seconds each process spent during the run: the ceiling
                    # is the busiest one (or the 2 cores all of them share)
                    "cpu_s": cpu,
                    "cpu_ms_per_sandbox": round(sum(cpu.values()) * 1000 / a.creates, 1)}
        finally:
            for cl in clients:
                cl.close()
            st.stop()


def _running(c: httpx.Client) -> set[str]:
    cursor: str | None = None
    running: set[str] = set()
    while True:
        params = {"state": "running", "limit": "500"}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/sandboxes", params=params).json()
        running |= {i["id"] for i in page["items"]}
        cursor = page["next_cursor"]
        if not cursor:
            return running


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--placements", type=int, default=2000)
    ap.add_argument("--store", default="sqlite")
    ap.add_argument("--creates", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--gateways", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--schedulers", type=int, default=1, choices=(1, 2, 3))
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
