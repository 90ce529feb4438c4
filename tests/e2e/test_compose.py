"""infra/compose.yaml brought up for real on a local Docker engine: images
built by compose from infra/Dockerfile on a locally made base, NATS with its
auth callout and TLS, PostgreSQL as the event store, the control plane, and a
host agent running QEMU VMs inside its container (KVM where /dev/kvm works,
else TCG); the user path through the published API port; then all torn down."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time

import httpx
import pytest

from corral.cli import main as corral_cli
from services.host_agent.adapters.guest_image.builder import ensure_image, image_root
from tests.prereq import unavailable

from .compose_env import (INFRA, ROOT, EngineUnavailable, Project, local_base_images,
                          start_engine, stop_engine, wheelhouse)
from .stack import Api

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.timeout(2400)]
CONTROL = ["nats", "postgres", "auth", "scheduler", "billing", "api-gateway"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    try:
        proc = start_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
        local_base_images()
    except EngineUnavailable as e:
        unavailable(f"a Docker engine ({e})")
    yield
    stop_engine(proc)


@pytest.fixture(scope="module")
def project(engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("compose")
    ensure_image("default")  # the guest image the agent container is given
    wheelhouse()
    assert corral_cli(["secrets", "init", str(d / "secrets")]) == 0
    files = [INFRA / "compose.yaml"]
    if os.path.exists("/dev/kvm"):
        files.append(INFRA / "compose.kvm.yaml")
    p = Project(d, f"corraltest{os.getpid()}", files)
    p.write_env(CORRAL_SRC=str(ROOT), BASE_IMAGE="corral-base:bookworm",
                POSTGRES_IMAGE="corral-postgres:bookworm", BUILD_NETWORK="host",
                POSTGRES_PASSWORD=secrets.token_urlsafe(16), API_PORT=str(_free_port()),
                IMAGE_CACHE=str(image_root()))
    try:
        yield p
    finally:
        p.run("--profile", "host", "down", "-v", "--remove-orphans", "-t", "20",
              check=False, timeout=300)


def test_compose_up_create_exec_files_delete(project):
    t0 = time.monotonic()
    project.run("build", profile="host", timeout=1800)
    built = time.monotonic() - t0
    t1 = time.monotonic()
    project.run("up", "-d", *CONTROL, timeout=600)
    project.wait_healthy(CONTROL, timeout_s=300)
    control_up = time.monotonic() - t1

    creds = project.run("exec", "-T", "auth", "python", "-m", "services.auth", "bootstrap",
                        "--org", "acme", "--json").stdout
    keys = json.loads(creds.strip().splitlines()[-1])
    project.write_env(CORRAL_HOST_TOKEN=keys["host_token"])
    t2 = time.monotonic()
    project.run("up", "-d", "host-agent", profile="host")
    project.wait_healthy(["host-agent"], timeout_s=600)
    agent_up = time.monotonic() - t2

    api = Api(f"http://127.0.0.1:{project.env['API_PORT']}", keys["api_key"])
    t3 = time.monotonic()
    r = api.post("/v1/sandboxes?wait=true&timeout_s=600", json={"name": "compose-1"},
                 timeout=660)
    assert r.status_code == 201, (r.status_code, r.text, project.logs())
    sb = r.json()
    first_create = time.monotonic() - t3
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

    t4 = time.monotonic()
    r = api.post("/v1/sandboxes?wait=true&timeout_s=300", json={}, timeout=330)
    assert r.status_code == 201, r.text
    second_create = time.monotonic() - t4

    assert api.delete(f"/v1/sandboxes/{sb['id']}").status_code == 202
    api.wait_state(sb["id"], ("destroyed",), timeout_s=120)
    assert api.delete(f"/v1/sandboxes/{r.json()['id']}").status_code == 202
    api.wait_state(r.json()["id"], ("destroyed",), timeout_s=120)
    ps = project.run("exec", "-T", "host-agent", "sh", "-c",
                     "pgrep -c qemu-system || true").stdout.strip()
    assert ps == "0", f"QEMU processes left in the agent container: {ps}"
    # unauthenticated callers are refused at the published port
    anon = httpx.get(f"http://127.0.0.1:{project.env['API_PORT']}/v1/sandboxes", timeout=10)
    assert anon.status_code == 401
    print(f"\ncompose: build {built:.1f}s, control plane healthy {control_up:.1f}s, "
          f"host agent healthy {agent_up:.1f}s, first create {first_create:.1f}s, "
          f"second create {second_create:.1f}s")
