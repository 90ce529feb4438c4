"""`corral up` passes the user's CORRAL_* settings to the services it starts
(the stack's own bus, ports and state dir win), so the README's
`CORRAL_WARM_POOL=... make up` and any quota or capacity setting work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.devstack import DevStack

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_settings_from_keeps_the_users_and_drops_what_the_stack_owns():
    got = DevStack.settings_from({"CORRAL_WARM_POOL": "default/1/256=2", "PATH": "/bin",
                                  "CORRAL_QUOTA_MAX_LIVE": "3", "CORRAL_NATS_URL": "nats://x",
                                  "CORRAL_BUS_ISSUER_SEED": "S", "CORRAL_HTTP_PORT": "1"})
    assert got == {"CORRAL_WARM_POOL": "default/1/256=2", "CORRAL_QUOTA_MAX_LIVE": "3"}
    stack = DevStack(Path("/tmp/unused"), http_port=1234, settings=got)
    env = stack.env("host_agent")
    assert env["CORRAL_WARM_POOL"] == "default/1/256=2" and env["CORRAL_HTTP_PORT"] == "1234"


def test_a_setting_given_to_corral_up_reaches_the_services(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_QUOTA_MAX_LIVE": "1", "CORRAL_MAX_SANDBOXES": "7",
                "PYTHONPATH": str(REPO)})
    proc = subprocess.Popen([sys.executable, "-m", "corral", "up", "--driver", "fake",
                             "--port", str(port), "--state-dir", str(tmp_path / "st")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        dev = tmp_path / "st" / "dev.env"
        deadline = time.monotonic() + 120
        while not dev.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "corral up did not start"
            time.sleep(0.2)
        vals = dict(line.split("=", 1) for line in dev.read_text().split())
        h = {"Authorization": f"Bearer {vals['CORRAL_API_KEY']}"}
        url = vals["CORRAL_API_URL"]
        first = httpx.post(url + "/v1/sandboxes", json={}, headers=h, timeout=10)
        assert first.status_code == 202, first.text
        second = httpx.post(url + "/v1/sandboxes", json={}, headers=h, timeout=10)
        assert second.status_code == 429 and "1 live" in second.json()["detail"]  # gateway
        admin = {"Authorization": f"Bearer {vals['CORRAL_ADMIN_KEY']}"}
        deadline = time.monotonic() + 30
        while True:  # the host agent's setting, as the scheduler recorded it
            hosts = httpx.get(url + "/v1/hosts", headers=admin, timeout=10).json()["items"]
            if hosts and hosts[0]["capacity"]["sandboxes"] == 7:
                break
            assert time.monotonic() < deadline, hosts
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
