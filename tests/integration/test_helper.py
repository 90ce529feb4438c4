"""Privilege separation, for real: the privileged helper runs as root, the
agent side runs as `nobody`; a VM (with its TAP and nft rules) starts, runs
and is destroyed entirely through the helper's typed requests, and the
helper refuses whatever is not one of its VMs' steps."""
from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters.helper.client import HelperClient
from services.host_agent.adapters.helper.wire import HelperError
from services.host_agent.adapters.jail.privileged import UID_RANGE, VmSpawn

from .vm_support import require

pytestmark = [pytest.mark.integration, pytest.mark.vm, pytest.mark.net]
require(("qemu-system-x86_64", "qemu-img", "nft", "/usr/bin/python3.11"), root=True)
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
SITE = REPO / ".venv" / "lib" / "python3.11" / "site-packages"

AGENT = textwrap.dedent("""
    import asyncio, json, os, sys
    from pathlib import Path
    from services.host_agent.adapters.helper.client import HelperClient, HelperNetwork
    from services.host_agent.adapters.qemu import QemuDriver
    from services.host_agent.application.ports import ExecRequest, VmSpec

    async def main():
        client = HelperClient(Path(sys.argv[1]))
        net = HelperNetwork(client)
        await net.setup()
        d = QemuDriver(Path(sys.argv[2]), templates=False, network=net, privileged=client)
        res = {}
        async def rec(sid, kind, value):
            res[kind] = value
        info = await d.start(VmSpec("helped", "helped"), rec)
        r = await d.exec("helped", ExecRequest(["sh", "-c", "id -u; ip -4 -o addr show eth0"]))
        status = Path(f"/proc/{info.pid}/status").read_text()
        out = {"agent_uid": os.getuid(), "pid": info.pid, "ip": info.ip,
               "stdout": r.stdout.decode(), "qemu_uid": int(status.split("Uid:")[1].split()[0]),
               "seccomp": status.split("Seccomp:")[1].split()[0]}
        await d.destroy("helped", res)
        out["gone"] = not Path(f"/proc/{info.pid}").exists()
        await d.close()
        await net.teardown()
        print(json.dumps(out))
    asyncio.run(main())
""")


@pytest.fixture
def stage():
    """A state dir nobody may write and a copy of the image nobody may read
    (outside pytest's tmp dirs, which only root may enter)."""
    img = ensure_image("default")
    tmp_path = Path(tempfile.mkdtemp(prefix="crlhelper-"))
    tmp_path.chmod(0o755)
    images = tmp_path / "images" / img.kernel.parent.name
    images.mkdir(parents=True)
    for f in img.kernel.parent.iterdir():
        os.link(f, images / f.name)
    state = tmp_path / "state"
    (state / "host").mkdir(parents=True)
    for d in (state, state / "host"):
        os.chown(d, NOBODY, NOBODY)
    yield tmp_path, state
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def helper(stage):
    tmp, state = stage
    sock = tmp / "helper.sock"
    bridge = f"crlh{secrets.token_hex(3)}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_STATE_DIR": str(state),
           "CORRAL_HELPER_SOCKET": str(sock), "CORRAL_AGENT_UID": str(NOBODY),
           "CORRAL_BRIDGE": bridge, "CORRAL_SUBNET": f"198.18.{random.randint(1, 254)}.0/24",
           "CORRAL_NATS_URL": "nats://127.0.0.1:1", "CORRAL_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "services.host_agent", "helper"], env=env,
                            cwd=REPO)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "helper did not start"
        time.sleep(0.05)
    yield sock, state, bridge
    proc.terminate()
    proc.wait(30)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_an_unprivileged_agent_runs_a_vm_through_the_helper(helper, stage):
    sock, state, _bridge = helper
    tmp, _ = stage
    env = {"PYTHONPATH": f"{REPO}:{SITE}", "CORRAL_IMAGE_DIR": str(tmp / "images"),
           "PATH": "/usr/bin:/bin", "HOME": str(state)}
    r = subprocess.run(["/usr/bin/python3.11", "-c", AGENT, str(sock),
                        str(state / "host" / "vms")], env=env, cwd=REPO, user=NOBODY,
                       group=NOBODY, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["agent_uid"] == NOBODY  # the agent was not root...
    assert UID_RANGE[0] <= out["qemu_uid"] < sum(UID_RANGE) and out["seccomp"] == "2"
    assert out["stdout"].splitlines()[0] == "0"  # ...the guest is root in its VM
    assert out["ip"] and out["ip"] in out["stdout"]  # its TAP and lease via the helper
    assert out["gone"]


async def test_the_helper_serves_its_agent_only_and_checks_every_request(helper):
    sock, state, _bridge = helper
    # root is not the agent: the connection is dropped
    with pytest.raises((HelperError, ConnectionError, OSError)):
        await HelperClient(sock).call("forget_others", {"live": []})

    async def as_agent(op: str, args: dict) -> str:
        """Run one request from a child process that is the agent's uid."""
        code = ("import asyncio, json, sys\n"
                "from pathlib import Path\n"
                "from services.host_agent.adapters.helper.client import HelperClient\n"
                "async def m():\n"
                "    try:\n"
                f"        r, _ = await HelperClient(Path({str(sock)!r})).call({op!r}, {args!r})\n"
                "        print('ACCEPTED', r)\n"
                "    except Exception as e:\n"
                "        print('REFUSED', type(e).__name__, e)\n"
                "asyncio.run(m())\n")
        r = await asyncio.to_thread(
            subprocess.run, ["/usr/bin/python3.11", "-c", code],
            env={"PYTHONPATH": f"{REPO}:{SITE}", "PATH": "/usr/bin:/bin"}, cwd=REPO,
            user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=60)
        return r.stdout.strip() or r.stderr[-500:]

    sh = VmSpawn("x", UID_RANGE[0], ["/bin/sh", "-c", "id"], str(state))
    refused = {
        "a shell instead of QEMU": ("spawn_vm", {"req": sh.__dict__}),
        "root as the VM's uid": ("spawn_vm", {"req": {**sh.__dict__, "uid": 0}}),
        "a disk outside the VMs": ("prepare_disk", {"disk": "/etc", "uid": UID_RANGE[0]}),
        "a host interface": ("open_tap", {"name": "eth0"}),
        "any process": ("kill_vm", {"pid": 1, "vm": "x"}),
        "a bad name": ("release_vm", {"vm": "../../etc"}),
        "an unknown op": ("chmod", {"path": "/etc/shadow"}),
    }
    for what, (op, args) in refused.items():
        answer = await as_agent(op, args)
        if op == "kill_vm":  # init is no VM: nothing signalled, False answered
            assert answer == "ACCEPTED False" and Path("/proc/1").exists(), (what, answer)
            continue
        assert answer.startswith("REFUSED"), (what, answer)
