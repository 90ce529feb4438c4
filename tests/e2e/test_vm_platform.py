"""Real microVMs through the whole platform: REST -> NATS -> host agent -> QEMU."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = [pytest.mark.e2e, pytest.mark.vm]


@pytest.fixture(scope="module")
def vm_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("vmstack"), driver="qemu") as st:
        yield st


@pytest.fixture(scope="module")
def vm_api(vm_stack):
    return Api(vm_stack.api_url, vm_stack.creds.api_key)


@pytest.fixture(scope="module")
def box(vm_api):
    r = vm_api.post("/v1/sandboxes?wait=true", json={"name": "vm-box", "env": {"GREETING": "hi"}})
    assert r.status_code == 201, r.text
    return r.json()


def qemu_pids(sandbox_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"corral-{sandbox_id}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_exec_round_trip_in_a_real_vm(vm_api, box):
    assert box["state"] == "running" and box["host_id"]
    r = vm_api.post(f"/v1/sandboxes/{box['id']}/exec",
                    json={"cmd": ["python3", "-c", "import os,sys; print(os.environ['GREETING']);"
                                  "print('err', file=sys.stderr); sys.exit(3)"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out == {**out, "exit_code": 3, "stdout": "hi\n", "stderr": "err\n", "timed_out": False}
    r = vm_api.post(f"/v1/sandboxes/{box['id']}/exec",
                    json={"cmd": ["sh", "-c", "cat; pwd"], "stdin": "in\n", "cwd": "/tmp"})
    assert r.json()["stdout"] == "in\n/tmp\n"
    r = vm_api.post(f"/v1/sandboxes/{box['id']}/exec", json={"cmd": ["sleep", "30"], "timeout_s": 1})
    assert r.json()["timed_out"] is True
    r = vm_api.post(f"/v1/sandboxes/{box['id']}/exec", json={"cmd": ["uname", "-r"]})
    assert r.json()["stdout"].strip() != os.uname().release  # its own kernel


def test_file_round_trip_binary_up_to_the_cap(vm_api, box):
    """Both larger than one bus message (the stack's NATS: stock 1 MiB
    max_payload): they travel in parts."""
    base = f"/v1/sandboxes/{box['id']}/files"
    for size in ((4 << 20) - 1, 1 << 20):
        data = os.urandom(size)
        assert vm_api.put(base, params={"path": "/root/x/blob.bin"},
                          content=data).status_code == 204
        got = vm_api.get(base, params={"path": "/root/x/blob.bin"})
        assert got.status_code == 200 and got.content == data, size
    names = [e["name"] for e in vm_api.get(base + "/list", params={"path": "/root/x"}).json()["entries"]]
    assert names == ["blob.bin"]
    assert vm_api.get(base, params={"path": "/root/missing"}).status_code == 404
    assert vm_api.get(base, params={"path": "relative"}).status_code == 422


def test_delete_removes_vm_disk_and_tap(vm_stack, vm_api):
    sb = vm_api.post("/v1/sandboxes?wait=true", json={}).json()
    assert sb["state"] == "running" and qemu_pids(sb["id"])
    vm_dirs = list(Path(vm_stack.state_dir).glob(f"vms-*/{sb['id']}"))
    assert vm_dirs
    vm_api.delete(f"/v1/sandboxes/{sb['id']}")
    vm_api.wait_state(sb["id"], ("destroyed",), 60)
    assert qemu_pids(sb["id"]) == [] and not vm_dirs[0].exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    bridge = vm_stack.extra_env["CORRAL_BRIDGE"]
    assert sum(f"master {bridge}" in line for line in links.splitlines()) == 1  # only `box`


def test_agent_killed_during_boot_resumes_and_leaves_nothing_behind(vm_stack, vm_api):
    r = vm_api.post("/v1/sandboxes", json={})
    sid = r.json()["id"]
    deadline = time.monotonic() + 60
    while not qemu_pids(sid):  # qemu spawned: the boot is under way
        assert time.monotonic() < deadline
        time.sleep(0.05)
    vm_stack.kill("host_agent", signal.SIGKILL)
    vm_stack.start_service("host_agent")
    assert vm_api.wait_state(sid, ("running",), 120)["state"] == "running"
    assert len(qemu_pids(sid)) == 1  # the interrupted boot's qemu is gone
    out = vm_api.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]}).json()
    assert out["exit_code"] == 0
    vm_api.delete(f"/v1/sandboxes/{sid}")
    vm_api.wait_state(sid, ("destroyed",), 60)
    assert qemu_pids(sid) == []


def parse_sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_streaming_exec_over_sse(vm_api, box):
    with vm_api.c.stream("POST", f"/v1/sandboxes/{box['id']}/exec",
                         headers={"Accept": "text/event-stream"},
                         json={"cmd": ["sh", "-c", "echo a; echo b >&2; sleep 0.3; echo c; exit 4"]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-op-id"]
        events = parse_sse(r.read().decode())
    out = "".join(d["data"] for e, d in events if e == "stdout")
    err = "".join(d["data"] for e, d in events if e == "stderr")
    assert out == "a\nc\n" and err == "b\n"
    assert events[-1][0] == "exit" and events[-1][1]["exit_code"] == 4
    assert [e for e, _ in events].count("exit") == 1
    # errors before streaming are still problems
    r = vm_api.post("/v1/sandboxes/nope/exec", headers={"Accept": "text/event-stream"},
                    json={"cmd": ["true"]})
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


def test_pause_resume_stop_start_keeps_the_disk(vm_api):
    sb = vm_api.post("/v1/sandboxes?wait=true", json={}).json()
    sid, base = sb["id"], f"/v1/sandboxes/{sb['id']}"
    assert vm_api.put(base + "/files", params={"path": "/root/keep.txt"},
                      content=b"persisted").status_code == 204
    assert vm_api.post(base + "/pause").status_code == 202
    vm_api.wait_state(sid, ("paused",), 30)
    assert vm_api.post(base + "/exec", json={"cmd": ["true"]}).status_code == 409
    assert vm_api.post(base + "/pause").status_code == 202  # idempotent
    assert vm_api.post(base + "/resume").status_code == 202
    vm_api.wait_state(sid, ("running",), 30)
    assert vm_api.post(base + "/exec", json={"cmd": ["true"]}).json()["exit_code"] == 0
    assert vm_api.post(base + "/stop").status_code == 202
    vm_api.wait_state(sid, ("stopped",), 60)
    assert qemu_pids(sid) == []
    assert vm_api.post(base + "/resume").status_code == 409
    assert vm_api.post(base + "/start").status_code == 202
    vm_api.wait_state(sid, ("running",), 120)
    assert vm_api.get(base + "/files", params={"path": "/root/keep.txt"}).content == b"persisted"
    kinds = [e["type"] for e in vm_api.get(base + "/events", params={"limit": 100}).json()["items"]]
    for k in ("SandboxPaused", "SandboxResumed", "SandboxStopped", "SandboxStartRequested"):
        assert k in kinds
    assert kinds.count("SandboxStarted") == 2
    vm_api.delete(base)
    vm_api.wait_state(sid, ("destroyed",), 60)


def test_creates_restore_from_template_and_forks_carry_files(vm_stack, vm_api):
    # the template for the default class is built at agent start; once it exists,
    # creates restore instead of booting
    deadline = time.monotonic() + 180
    while True:
        sb = vm_api.post("/v1/sandboxes?wait=true", json={}).json()
        started = next(e for e in vm_api.get(f"/v1/sandboxes/{sb['id']}/events").json()["items"]
                       if e["type"] == "SandboxStarted")
        if started["start_mode"] == "restore" or time.monotonic() > deadline:
            break
        vm_api.delete(f"/v1/sandboxes/{sb['id']}")
    assert started["start_mode"] == "restore"
    base = f"/v1/sandboxes/{sb['id']}"
    assert vm_api.put(base + "/files", params={"path": "/root/state.txt"},
                      content=b"before snapshot").status_code == 204
    r = vm_api.post(base + "/snapshots?wait=true", json={"name": "warm"})
    assert r.status_code == 201, r.text
    snap = r.json()
    r = vm_api.post(f"/v1/snapshots/{snap['id']}/fork?wait=true", json={"count": 2})
    assert r.status_code == 201, r.text
    forks = r.json()["items"]
    seen = []
    for f in forks:
        fb = f"/v1/sandboxes/{f['id']}"
        assert vm_api.get(fb + "/files", params={"path": "/root/state.txt"}).content == b"before snapshot"
        out = vm_api.post(fb + "/exec", json={"cmd": ["sh", "-c",
                          "head -c16 /dev/urandom | od -An -tx1; hostname; date +%s"]}).json()
        rand, host, clock = out["stdout"].strip().splitlines()
        assert abs(int(clock) - time.time()) < 5
        seen.append((rand, host))
        vm_api.delete(fb)
    assert seen[0][0] != seen[1][0]  # no shared randomness between clones
    hosts = [h for _, h in seen]  # each fork its own identity: a hostname from its id
    assert hosts[0] != hosts[1] and hosts == [guest_hostname_of(f) for f in forks]
    vm_api.delete(base)
    assert vm_api.delete(f"/v1/snapshots/{snap['id']}").status_code == 202


def guest_hostname_of(sb: dict) -> str:
    """What a sandbox's hostname is: its name, or `sb-` and 12 hex digits of its id."""
    return sb["name"] or "sb-" + sb["id"].replace("-", "")[:12]
