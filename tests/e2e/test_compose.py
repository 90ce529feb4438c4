"""infra/compose.yaml brought up for real on a local Docker engine: images
built by compose from infra/Dockerfile on a locally made base, NATS with its
auth callout and TLS, PostgreSQL as the event store, the control plane, and a
host agent running QEMU VMs inside its container (KVM where /dev/kvm works,
else TCG); the user path through the published API port; then all torn down."""
from __future__ import annotations

import hashlib
import os
import time

import httpx
import pytest

from corral.composeup import (EngineUnavailable, bring_up, local_base_images, prepare,
                              start_engine, stop_engine, tear_down, wheelhouse)
from services.host_agent.adapters.guest_image.builder import ensure_image, image_root
from tests.prereq import unavailable

from .stack import Api

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    try:
        proc = start_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    except EngineUnavailable as e:
        unavailable(f"a Docker engine ({e})")
    try:  # an engine started here is stopped whatever fails after it
        try:
            local_base_images()
        except EngineUnavailable as e:
            unavailable(f"the local base images ({e})")
        yield
    finally:
        stop_engine(proc)


@pytest.fixture(scope="module")
def project(engine, tmp_path_factory):
    ensure_image("default")  # the guest image the agent container is given
    wheelhouse()
    p = prepare(tmp_path_factory.mktemp("compose"), f"corraltest{os.getpid()}", image_root())
    try:
        yield p
    finally:
        tear_down(p)


def test_compose_up_create_exec_files_delete(project):
    t0 = time.monotonic()
    project.run("build", profile="host", timeout=1800)
    built = time.monotonic() - t0
    took, keys = bring_up(project)
    base = f"http://127.0.0.1:{project.env['API_PORT']}"
    api = Api(base, keys["api_key"])

    t = time.monotonic()
    r = api.post("/v1/sandboxes?wait=true&timeout_s=600", json={"name": "compose-1"},
                 timeout=660)
    assert r.status_code == 201, (r.status_code, r.text, project.logs())
    sb = r.json()
    first_create = time.monotonic() - t
    assert sb["state"] == "running" and sb["host_id"] == keys["host_id"], sb

    out = api.post(f"/v1/sandboxes/{sb['id']}/exec",
                   json={"cmd": ["sh", "-c", "uname -s; echo $((6*7))"]}).json()
    assert out["exit_code"] == 0 and out["stdout"].split() == ["Linux", "42"], out
    blob = os.urandom(256 * 1024)
    put = api.put(f"/v1/sandboxes/{sb['id']}/files", params={"path": "/tmp/in/blob"},
                  content=blob)
    assert put.status_code in (200, 201, 204), put.text
    back = api.get(f"/v1/sandboxes/{sb['id']}/files", params={"path": "/tmp/in/blob"})
    assert back.status_code == 200 and back.content == blob
    out = api.post(f"/v1/sandboxes/{sb['id']}/exec",
                   json={"cmd": ["sha256sum", "/tmp/in/blob"]}).json()
    assert out["stdout"].split()[0] == hashlib.sha256(blob).hexdigest()

    t = time.monotonic()
    r = api.post("/v1/sandboxes?wait=true&timeout_s=300", json={}, timeout=330)
    assert r.status_code == 201, r.text
    second_create = time.monotonic() - t

    for sid in (sb["id"], r.json()["id"]):
        assert api.delete(f"/v1/sandboxes/{sid}").status_code == 202
        api.wait_state(sid, ("destroyed",), timeout_s=120)
    left = project.run("exec", "-T", "host-agent", "sh", "-c",
                       "pgrep -c qemu-system || true").stdout.strip()
    assert left == "0", f"QEMU processes left in the agent container: {left}"
    # unauthenticated callers are refused at the published port
    assert httpx.get(f"{base}/v1/sandboxes", timeout=10).status_code == 401
    print(f"\ncompose: build {built:.1f}s, control plane healthy "
          f"{took['control_plane_healthy_s']:.1f}s, host agent healthy "
          f"{took['host_agent_healthy_s']:.1f}s, first create {first_create:.1f}s, "
          f"second create {second_create:.1f}s")
