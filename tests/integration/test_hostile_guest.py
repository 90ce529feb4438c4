"""A hostile guest channel on the real driver (real QEMU VMs): the channel of
one VM is swapped for a peer that stops reading, or floods. Stop and destroy
still end by their deadlines with QEMU gone, and another VM on the same host
keeps answering execs meanwhile."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import pytest_asyncio

from guest import protocol as P
from services.host_agent.adapters import procs
from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.adapters.qemu.agent_client import AgentClient
from services.host_agent.adapters.qemu.driver import SYNC_BEFORE_STOP_S
from services.host_agent.application.ports import ExecRequest, VmSpec

from .vm_support import Recorder, require

pytestmark = [pytest.mark.integration, pytest.mark.vm]
require(("qemu-system-x86_64", "qemu-img"), root=True)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest_asyncio.fixture
async def host(tmp_path):
    ensure_image("default")
    d = QemuDriver(tmp_path / "vms", templates=False)
    rec = Recorder()
    for sid in ("bad", "good"):
        await d.start(VmSpec(sid, sid), rec)
    yield d, rec
    for sid in ("bad", "good"):
        await d.destroy(sid, rec.by_sid.get(sid, {}))
    await d.close()


async def hostile(tmp_path: Path, behave) -> tuple[AgentClient, asyncio.Server]:
    path = str(tmp_path / "hostile.sock")
    server = await asyncio.start_unix_server(behave, path)
    return await AgentClient.connect(path), server


async def keeps_answering(d: QemuDriver, stop: asyncio.Event) -> list[float]:
    """Exec latencies on the good VM while the bad one is being dealt with."""
    out = []
    while not stop.is_set():
        t0 = time.monotonic()
        r = await d.exec("good", ExecRequest(["true"], timeout_s=30))
        assert r.exit_code == 0
        out.append(time.monotonic() - t0)
        await asyncio.sleep(0.1)
    return out


async def test_stop_with_a_guest_that_stopped_reading(host, tmp_path):
    d, _rec = host
    async def deaf(r, w):
        await asyncio.sleep(120)
    bad = d.launcher.vms["bad"]
    real = bad.agent
    bad.agent, server = await hostile(tmp_path, deaf)
    await real.close()
    # fill its write side first: a 16 MiB put that can never be read
    with pytest.raises(Exception):  # noqa: B017 - AgentUnavailable or TimeoutError
        await d.put_file("bad", "/root/x", os.urandom(16 << 20))
    pid = bad.pid
    stop = asyncio.Event()
    meanwhile = asyncio.ensure_future(keeps_answering(d, stop))
    t0 = time.monotonic()
    await asyncio.wait_for(d.stop("bad"), SYNC_BEFORE_STOP_S + 20)
    took = time.monotonic() - t0
    stop.set()
    latencies = await meanwhile
    assert not procs.is_ours(pid, "bad", d.state_root) and await procs.wait_exit(pid, 1)
    assert "bad" not in d.launcher.vms
    assert took < SYNC_BEFORE_STOP_S + 15 and latencies and max(latencies) < 10
    server.close()


async def test_destroy_with_a_flooding_guest(host, tmp_path):
    d, rec = host
    async def flood(r, w):
        chunk = os.urandom(64 << 10)
        try:
            while True:
                w.write(P.encode({"id": 1, "type": "out", "stream": "stdout"}, chunk))
                await w.drain()
        except (ConnectionError, OSError):
            return
    bad = d.launcher.vms["bad"]
    real = bad.agent
    bad.agent, server = await hostile(tmp_path, flood)
    await real.close()
    pid, before = bad.pid, rss_mib()
    stop = asyncio.Event()
    meanwhile = asyncio.ensure_future(keeps_answering(d, stop))
    await asyncio.sleep(3)  # flooding away
    t0 = time.monotonic()
    await asyncio.wait_for(d.destroy("bad", rec.by_sid["bad"]), 60)
    took = time.monotonic() - t0
    stop.set()
    latencies = await meanwhile
    assert await procs.wait_exit(pid, 1) and "bad" not in d.launcher.vms
    assert took < 15 and latencies and max(latencies) < 10
    assert rss_mib() - before < 64
    server.close()
