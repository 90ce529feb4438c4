"""Custom images through REST on the whole stack (QEMU): a Dockerfile with an
`apt-get install` built cold, then again with its last line changed (the
cache), and create -> first exec on that image beside the built-in one
(each class warmed first, so both restore from their template). JSON.

    .venv/bin/python bench/images.py --runs 3 --creates 20

Build VMs need the package mirror and a DNS server: the stack's egress is
limited to this machine's resolver and the mirror's addresses."""
from __future__ import annotations

import argparse
import io
import json
import secrets
import socket
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.host_agent.settings import host_resolver

from measure import pct

DOCKERFILE = """\
FROM default
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends jq >/dev/null
ENV GREETING="hello world"
COPY app/ /srv/app/
WORKDIR /srv/app
RUN echo {last} > built.txt
"""


def context(last: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"Dockerfile": DOCKERFILE.format(last=last).encode(),
                           "app/main.py": b"print('hi')\n"}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build(c: Any, name: str, last: str) -> dict:
    t0 = time.monotonic()
    r = c.post("/v1/images", params={"name": name, "wait": "true", "timeout_s": 1800},
               content=context(last), headers={"Content-Type": "application/x-tar"},
               timeout=1900)
    assert r.status_code == 201, r.text
    img = r.json()
    return {"wall_s": round(time.monotonic() - t0, 1), "build_ms": img["build_ms"],
            "size_mib": img["size_bytes"] >> 20,
            "steps": [(s["line"], s["cached"], s["ms"]) for s in img["steps"]]}


def creates(c: Any, image: str, n: int) -> list[float]:
    out = []
    for i in range(n + 1):
        t0 = time.monotonic()
        r = c.post("/v1/sandboxes?wait=true", json={"image": image}, timeout=300)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        e = c.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]}, timeout=120)
        assert e.json()["exit_code"] == 0
        ms = (time.monotonic() - t0) * 1000
        c.delete(f"/v1/sandboxes/{sid}")
        if i == 0:  # the class's first create: boots and schedules its template
            wait_template(c, image)
            continue
        out.append(ms)
        time.sleep(0.5)  # its teardown is not in the next one's time
    return out


def wait_template(c: Any, image: str, timeout_s: float = 180) -> None:
    """Until a create of the class restores (its template is built)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(2)
        r = c.post("/v1/sandboxes?wait=true", json={"image": image}, timeout=300)
        sid = r.json()["id"]
        ev = c.get(f"/v1/sandboxes/{sid}/events", params={"limit": 100}).json()["items"]
        c.delete(f"/v1/sandboxes/{sid}")
        if any(e.get("start_mode") == "restore" for e in ev if e["type"] == "SandboxStarted"):
            return
    raise TimeoutError(f"no template for {image}")


def dist(xs: list[float]) -> dict:
    return {"p50": pct(xs, 50), "p95": pct(xs, 95), "p99": pct(xs, 99),
            "each": [round(x) for x in xs]}


def one_run(n: int) -> dict:
    import httpx

    from corral.devstack import DevStack
    mirrors = sorted({a[4][0] for a in socket.getaddrinfo("deb.debian.org", 80,
                                                          socket.AF_INET)})
    resolver = host_resolver()
    allow = ",".join(f"{ip}/32" for ip in [*mirrors, *([resolver] if resolver else [])])
    with tempfile.TemporaryDirectory(prefix="cbi-") as tmp:
        env = {"CORRAL_BRIDGE": "crlb" + secrets.token_hex(2),
               "CORRAL_SUBNET": f"198.18.{secrets.randbelow(250) + 1}.0/24",
               "CORRAL_EGRESS_ALLOW": allow, "CORRAL_IMAGES_DIR": f"{tmp}/images",
               "CORRAL_LOG_LEVEL": "INFO"}
        st = DevStack(Path(tmp), driver="qemu", extra_env=env)
        st.start(timeout_s=180)
        try:
            assert st.creds is not None
            c = httpx.Client(base_url=st.api_url,
                             headers={"Authorization": f"Bearer {st.creds.api_key}"})
            cold = build(c, "bench", "first")
            cached = build(c, "bench2", "second")
            return {"cold_build": cold, "rebuild_last_line": cached,
                    "create_to_first_exec_ms": {"default": dist(creates(c, "default", n)),
                                                "custom": dist(creates(c, "bench2", n))}}
        finally:
            st.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--creates", type=int, default=10)
    a = ap.parse_args()
    runs = [one_run(a.creates) for _ in range(a.runs)]
    print(json.dumps({"runs": runs,
                      "cold_build_s": [r["cold_build"]["wall_s"] for r in runs],
                      "rebuild_s": [r["rebuild_last_line"]["wall_s"] for r in runs]}, indent=1))


if __name__ == "__main__":
    main()
