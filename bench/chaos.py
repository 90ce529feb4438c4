"""Chaos benchmark, printing JSON: for each kind of kill, a fresh stack on the
FAKE driver takes a burst of N creates (every fifth deleted at once) while
the target is killed with SIGKILL and restarted (NATS with the same port and
store) on a schedule; then the run waits for quiescence and counts accepted,
running, destroyed, lost and ghosts (VM processes without a live sandbox,
live sandboxes without a process), HostLost events, and the time to settle.

The "none" scenario (no kill) is the baseline, run side by side. Targets:
0 lost and 0 ghosts for every scenario, and no HostLost in a run whose
host agent was never down (a host lost then is a false verdict).

    python bench/chaos.py [--n 500] [--runs 1] [--concurrency 8]
        [--scenarios none,nats,scheduler,api_gateway,host_agent,auth,billing,all,mixed]
        [--at 5] [--down 3] [--seed 1]
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.chaos import Chaos, chaos_env
from corral.devstack import SERVICES, DevStack

from measure import pct

SCENARIOS = ("none", "nats", *SERVICES, "all", "mixed")


def schedule(name: str, at: float, down: float, seed: int) -> list[tuple[float, str, float]]:
    """(seconds into the burst, target, seconds down) for one scenario."""
    if name == "none":
        return []
    if name == "all":  # every service at once, then NATS
        return [(at, s, down) for s in SERVICES] + [(at + down + 4, "nats", down)]
    if name == "mixed":  # a random target every 6 s, NATS among them
        rnd = random.Random(seed)
        targets = ["nats", *SERVICES]
        return [(at + 6 * i, rnd.choice(targets), down) for i in range(4)]
    return [(at, name, down)]


def one_run(name: str, a: argparse.Namespace, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        st = DevStack(Path(tmp), driver="fake", extra_env=chaos_env())
        try:
            st.start(timeout_s=120)
            assert st.creds is not None
            chaos = Chaos(st, st.creds.api_key, deadline_s=180)
            t0 = time.monotonic()
            ids, deleted = chaos.burst(a.n, a.concurrency, delete_every=5,
                                       during=schedule(name, a.at, a.down, seed))
            out = chaos.settle(ids, deleted, timeout_s=a.settle_timeout)
            doc = out.as_dict()
            doc["burst_s"] = round(chaos.burst_s, 2)
            doc["host_agent_killed"] = any("host_agent" in k["targets"] for k in doc["kills"])
            doc["total_s"] = round(time.monotonic() - t0, 2)
            return doc
        finally:
            st.stop()


def summarize(runs: list[dict]) -> dict:
    settle = [r["settle_s"] for r in runs]
    false_losses = sum(r["hosts_lost"] for r in runs if not r["host_agent_killed"])
    return {"runs": len(runs),
            "lost": sum(r["lost"] for r in runs), "ghosts": sum(r["ghosts"] for r in runs),
            "unsettled": sum(r["unsettled"] for r in runs),
            "hosts_lost": sum(r["hosts_lost"] for r in runs), "false_host_losses": false_losses,
            "settle_s_p50": pct(settle, 50), "settle_s_p95": pct(settle, 95),
            "settle_s_per_run": settle,
            "meets_target": false_losses == 0 and all(
                r["lost"] == 0 and r["ghosts"] == 0 and r["unsettled"] == 0 for r in runs),
            "per_run": runs}


def main() -> None:
    # killed (SIGTERM): still stop the stack, whose FAKE VMs outlive it otherwise
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--at", type=float, default=5.0, help="first kill, seconds into the burst")
    p.add_argument("--down", type=float, default=3.0, help="seconds a killed target stays down")
    p.add_argument("--settle-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    names = [s for s in a.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; choose from {SCENARIOS}")
    result = {"n": a.n, "concurrency": a.concurrency, "at_s": a.at, "down_s": a.down,
              "target": {"lost": 0, "ghosts": 0, "false_host_losses": 0}, "scenarios": {}}
    for name in names:
        runs = [one_run(name, a, a.seed + i) for i in range(a.runs)]
        result["scenarios"][name] = summarize(runs)
        print(json.dumps({"scenario": name, **{k: v for k, v in result["scenarios"][name].items()
                                               if k != "per_run"}}), file=sys.stderr)
    base = result["scenarios"].get("none")
    if base:
        result["baseline"] = {"scenario": "none", "settle_s_p50": base["settle_s_p50"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
