"""Free-disk reservation on a host: a VM or snapshot that would eat into the
reserve is refused with `no_space`, and nothing is left half-made."""
import json

import pytest

from common.eventstore import store_env
from contracts.commands import StartSandbox
from contracts.sandbox import SandboxSpec
from contracts.snapshot import TakeSnapshot
from services.host_agent.adapters.disk import DiskRoom
from services.host_agent.adapters.fake_vmm import FakeVmmDriver
from services.host_agent.application.records import VmRecords
from services.host_agent.application.service import HostAgentService

pytestmark = pytest.mark.integration


def test_disk_room_reads_the_real_filesystem(tmp_path):
    room = DiskRoom(tmp_path / "not" / "made" / "yet", reserve_mib=0)
    free = room.free_mib()
    assert free > 0
    assert room.lacks(0) is None
    assert "kept free" in DiskRoom(tmp_path, reserve_mib=free + 1024).lacks(0)
    assert "1024 MiB needed" in DiskRoom(tmp_path, reserve_mib=free - 10).lacks(1024)


def _facts(records: VmRecords) -> list[dict]:
    out = []
    for n in records.recorder.select_notifications(0, 1000):
        env = json.loads(n.state).get("envelope")
        if isinstance(env, dict) and "type" in env:
            out.append(env)
    return out


async def test_start_and_snapshot_are_refused_when_the_disk_is_short(tmp_path):
    free = {"mib": 10_000}
    room = DiskRoom(tmp_path, reserve_mib=2048)
    room.free_mib = lambda: free["mib"]  # type: ignore[method-assign]  # a disk filling up
    records = VmRecords(store_env("sqlite", tmp_path, "host_agent"))
    driver = FakeVmmDriver(tmp_path / "vms")
    svc = HostAgentService("h1", records, driver, publish=None,  # type: ignore[arg-type]
                           snapshot_root=tmp_path / "snaps", disk_lacks=room.lacks)
    ids = dict(op_id="op", org_id="o", host_id="h1")
    try:
        await svc.handle(StartSandbox(sandbox_id="sb1", spec=SandboxSpec(memory_mib=512), **ids))
        assert records.get("sb1").state == "running"
        free["mib"] = 2048 + 511  # less than the RAM image above the reserve
        await svc.handle(TakeSnapshot(sandbox_id="sb1", snapshot_id="snap1", **ids))
        [failed] = [f for f in _facts(records) if f["type"] == "SnapshotFailed"]
        assert failed["failure"]["code"] == "no_space"
        assert not (tmp_path / "snaps" / "snap1").exists()
        free["mib"] = 2048 + 512
        await svc.handle(TakeSnapshot(sandbox_id="sb1", snapshot_id="snap2", **ids))
        assert [f["type"] for f in _facts(records) if f.get("snapshot_id") == "snap2"] == [
            "SnapshotCreated"]
        free["mib"] = 2047
        await svc.handle(StartSandbox(sandbox_id="sb2", spec=SandboxSpec(), **ids))
        assert records.get("sb2").state == "failed"
        [boot] = [f for f in _facts(records) if f["type"] == "SandboxFailed"]
        assert boot["failure"]["code"] == "no_space" and boot["sandbox_id"] == "sb2"
    finally:
        await driver.destroy("sb1", records.get("sb1").resources)
        records.close()
