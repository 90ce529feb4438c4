"""A start command redelivered while its boot is still recording its outcome
is ignored: it must not take the booting VM for a dead one and remove it
(found by bench/chaos.py: a sandbox shown running with no VM)."""
import asyncio
import threading

import pytest

from common.eventstore import store_env
from contracts.commands import StartSandbox
from contracts.sandbox import SandboxSpec
from corral.chaos import fake_vm_sandboxes
from services.host_agent.adapters.fake_vmm import FakeVmmDriver
from services.host_agent.application.records import VmRecords
from services.host_agent.application.service import HostAgentService

pytestmark = pytest.mark.integration


class SlowToRecordRunning(VmRecords):
    """Holds the "running" transition until released (a slow store)."""

    def __init__(self, env):
        super().__init__(env)
        self.entered, self.release = threading.Event(), threading.Event()

    def transition(self, sandbox_id, state, envelope):
        if state == "running":
            self.entered.set()
            assert self.release.wait(30)
        return super().transition(sandbox_id, state, envelope)


async def test_a_redelivered_start_during_the_boots_last_step_leaves_the_vm_alone(tmp_path):
    records = SlowToRecordRunning(store_env("sqlite", tmp_path, "host_agent"))
    driver = FakeVmmDriver(tmp_path / "vms")
    svc = HostAgentService("h1", records, driver, publish=None)  # type: ignore[arg-type]
    cmd = StartSandbox(sandbox_id="sb1", spec=SandboxSpec(), op_id="op", org_id="o",
                       host_id="h1")
    try:
        first = asyncio.ensure_future(svc.handle(cmd))
        assert await asyncio.to_thread(records.entered.wait, 30)  # VM up, outcome pending
        assert fake_vm_sandboxes(tmp_path / "vms") == {"sb1"}
        await svc.handle(cmd)  # the same command, redelivered
        assert fake_vm_sandboxes(tmp_path / "vms") == {"sb1"}  # not taken for dead
        records.release.set()
        await first
        assert records.get("sb1").state == "running"
        assert fake_vm_sandboxes(tmp_path / "vms") == {"sb1"}
    finally:
        records.release.set()
        vm = records.get("sb1")
        if vm is not None:
            await driver.destroy("sb1", dict(vm.resources))
        records.close()
