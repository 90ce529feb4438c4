"""Where a create's time goes through the platform: the services' JSON log
lines that carry a `stage` (accepted, published:<Type>, placed,
received:<Command>, network, handoff, ready, folded:<Type>) for one sandbox,
turned into per-stage durations beside the client's own timestamps."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from measure import pct

# (stage name, from mark, to mark): marks are log stages or the client's t0/t1/t2
STAGES = (
    ("rest_accept", "t0", "accepted"),  # REST in, store commit
    ("relay_publish", "accepted", "published:SandboxRequested"),
    ("scheduler_decision", "published:SandboxRequested", "placed"),
    ("command_to_host", "placed", "received:StartSandbox"),
    ("host_start", "received:StartSandbox", "ready"),  # network, restore, hand-off
    ("host_report", "ready", "published:SandboxStarted"),
    ("running_folded", "published:SandboxStarted", "folded:SandboxStarted"),
    ("rest_return", "folded:SandboxStarted", "t1"),
    ("first_exec", "t1", "t2"),
)


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def marks(log_dir: Path, sandbox_id: str) -> dict[str, float]:
    """First time each stage was logged for `sandbox_id` (epoch seconds),
    with `network_ms` and `handoff_ms` as the host reported them."""
    out: dict[str, float] = {}
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if sandbox_id not in line or '"stage"' not in line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("sandbox_id") != sandbox_id:
                continue
            stage = doc["stage"]
            out.setdefault(stage, _epoch(doc["ts"]))
            if stage == "network":
                out.setdefault("network_ms", float(doc.get("ms", 0)))
            if stage == "handoff":
                out.setdefault("handoff_ms", float(doc.get("handoff_ms", 0)))
    return out


def durations(m: dict[str, float], t0: float, t1: float, t2: float) -> dict[str, float]:
    """Per-stage ms for one create (stages whose marks are missing are left out)."""
    m = {**m, "t0": t0, "t1": t1, "t2": t2}
    out = {name: round((m[b] - m[a]) * 1000, 1) for name, a, b in STAGES if a in m and b in m}
    for k in ("network_ms", "handoff_ms"):
        if k in m:
            out[k.removesuffix("_ms") + "_reported"] = m[k]
    return out


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50/p95 per stage over the runs (ms; log timestamps have ms resolution)."""
    names = [n for n, _, _ in STAGES] + ["network_reported", "handoff_reported"]
    out = {}
    for name in names:
        xs = [r[name] for r in runs if name in r]
        if xs:
            out[name] = {"p50": pct(xs, 50), "p95": pct(xs, 95)}
    return out
