"""How long the platform takes to come up, side by side in one run:
- compose: `up -d` of infra/compose.yaml to every control-plane container
  healthy, then the host agent healthy, then the first sandbox running
  (images built beforehand, not timed per run; a new project each run);
- devstack (baseline): the same services as host processes (`make up`'s
  DevStack, SQLite stores, QEMU driver) to ready, then the first sandbox.
    python bench/compose_up.py --runs 3
Needs root, a Docker engine (started if absent) and the guest image."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.composeup import (bring_up, local_base_images, prepare, start_engine,
                              stop_engine, tear_down, wheelhouse)
from corral.devstack import DevStack
from services.host_agent.adapters.guest_image.builder import ensure_image, image_root


def first_create(base: str, key: str) -> float:
    t = time.monotonic()
    r = httpx.post(f"{base}/v1/sandboxes?wait=true&timeout_s=600", json={}, timeout=660,
                   headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    return time.monotonic() - t


def compose_run(tmp: Path, i: int) -> dict[str, float]:
    p = prepare(tmp / f"c{i}", f"corralbench{i}", image_root())
    try:
        took, keys = bring_up(p)
        took["first_create_s"] = first_create(f"http://127.0.0.1:{p.env['API_PORT']}",
                                              keys["api_key"])
        return took
    finally:
        tear_down(p)


def devstack_run(tmp: Path, i: int) -> dict[str, float]:
    t0 = time.monotonic()
    st = DevStack(tmp / f"d{i}", driver="qemu")
    try:
        st.start(timeout_s=300)
        ready = time.monotonic() - t0
        assert st.creds is not None
        return {"ready_s": ready, "first_create_s": first_create(st.api_url, st.creds.api_key),
                "total_s": time.monotonic() - t0}
    finally:
        st.stop()


def summary(runs: list[dict[str, float]]) -> dict:
    out: dict = {"runs": runs}
    for k in runs[0]:
        vals = sorted(r[k] for r in runs)
        out[k] = {"p50": round(statistics.median(vals), 2),
                  "p95": round(vals[min(len(vals) - 1, int(0.95 * len(vals)))], 2),
                  "per_run": [round(r[k], 2) for r in runs]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    ensure_image("default")
    engine = start_engine(Path(tempfile.mkdtemp()) / "dockerd.log")
    try:
        local_base_images()
        wheelhouse()
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            p = prepare(tmp / "build", "corralbenchbuild", image_root())
            t = time.monotonic()
            p.run("build", profile="host", timeout=1800)
            build_s = time.monotonic() - t
            comp, dev = [], []
            for i in range(a.runs):  # interleaved: both see the same machine
                comp.append(compose_run(tmp, i))
                dev.append(devstack_run(tmp, i))
        print(json.dumps({"runs": a.runs, "build_s_cached": round(build_s, 2),
                          "compose": summary(comp), "devstack_baseline": summary(dev)},
                         indent=1))
    finally:
        stop_engine(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
