"""Every VM's QEMU runs jailed (real microVMs): its own uid, no privileges,
QEMU's seccomp sandbox, a root holding only the VM's image and disk, a
cgroup with limits; a guest or a QEMU that overreaches is contained there."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import pytest_asyncio

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters.jail.privileged import UID_RANGE
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.adapters.qemu.launcher import VmAllowance
from services.host_agent.application.ports import ExecRequest, VmSpec

from .vm_support import Recorder, require

pytestmark = [pytest.mark.integration, pytest.mark.vm]
require(("qemu-system-x86_64", "qemu-img"), root=True)
SID = "jail-main"


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


@pytest_asyncio.fixture(scope="module")
async def driver(tmp_path_factory):
    ensure_image("default")
    d = QemuDriver(tmp_path_factory.mktemp("jailvms"), templates=False)
    yield d
    await d.close()


@pytest_asyncio.fixture(scope="module")
async def vm(driver):
    rec = Recorder()
    info = await driver.start(VmSpec(SID, "jailed", memory_mib=256), rec)
    yield info
    await driver.destroy(SID, rec.by_sid.get(SID, {}))


async def test_qemu_runs_unprivileged_under_seccomp(driver, vm):
    st = status(vm.pid)
    uid = int(st["Uid"].split()[0])
    assert UID_RANGE[0] <= uid < sum(UID_RANGE) and int(st["Gid"].split()[0]) == uid
    assert st["Uid"].split() == [str(uid)] * 4  # real, effective, saved, fs
    assert st["Seccomp"].strip() == "2"  # QEMU's filter (-sandbox on,...)
    assert st["NoNewPrivs"].strip() == "1"
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    assert st["Groups"].strip() == ""
    # it still works: the guest runs
    r = await driver.exec(SID, ExecRequest(["echo", "jailed"]))
    assert r.stdout == b"jailed\n"


async def test_its_root_holds_only_its_image_and_disk(driver, vm):
    root = Path(f"/proc/{vm.pid}/root")
    top = set(os.listdir(root))
    assert "etc" not in top and "home" not in top and "var" not in top
    assert {"usr", "dev", "proc"} <= top
    assert sorted(os.listdir(root / "dev")) == ["null", "random", "urandom", "zero"]
    layout = driver.launcher.layout(SID)
    assert (root / str(layout.overlay).lstrip("/")).exists()  # its disk
    assert not (root / str(layout.qmp).lstrip("/")).exists()  # its sockets are fds
    other_vm_dirs = [p for p in os.listdir(root / str(layout.dir.parent).lstrip("/"))]
    assert other_vm_dirs == [SID]
    assert sorted(os.listdir(root / str(layout.dir).lstrip("/"))) == ["disk"]
    # its /proc shows processes of its own uid only, and no system files
    mounts = Path(f"/proc/{vm.pid}/mountinfo").read_text().splitlines()
    proc = [m for m in mounts if " /proc " in m]
    assert len(proc) == 1 and "hidepid=invisible" in proc[0] and "subset=pid" in proc[0]
    assert not (root / "proc" / "sys").exists() and not (root / "proc" / "kcore").exists()
    writable = [m.split()[4] for m in mounts if " rw," in f" {m.split()[5]},"]
    assert set(writable) <= {str(layout.disk), "/dev"}, writable  # /dev: its own nodes
    # read-only everywhere but its disk
    usr = root / "usr" / "corral-write-test"
    with pytest.raises(OSError):
        usr.write_text("x")  # a read-only bind, even for root looking in


async def test_it_sits_in_its_own_cgroup_with_limits(driver, vm):
    cg = Path(f"/proc/{vm.pid}/cgroup").read_text()
    assert "corral/jail-main" in cg
    stats = await driver.launcher.priv.stats(SID)
    want = (256 + driver.launcher.allowance.tcg_mib) << 20
    if driver.accel == "kvm":
        want = (256 + driver.launcher.allowance.kvm_mib) << 20
    assert stats["memory_limit"] == want
    assert stats["pids_limit"] == driver.launcher.allowance.pids
    assert 0 < stats["memory_peak"] <= want


async def test_a_guest_that_allocates_beyond_its_memory_is_contained(driver, vm):
    """The guest kernel's OOM killer takes the hog; QEMU stays within its cgroup."""
    hog = "x = []\nwhile True: x.append(bytearray(16 << 20))"
    r = await driver.exec(SID, ExecRequest(["python3", "-c", hog], timeout_s=120))
    assert r.exit_code != 0
    stats = await driver.launcher.priv.stats(SID)
    assert stats["memory_peak"] <= stats["memory_limit"] and stats["oom_kills"] == 0
    assert (await driver.exec(SID, ExecRequest(["true"]))).exit_code == 0  # the VM lives


async def test_a_qemu_over_its_limit_is_killed_in_its_cgroup_not_the_agent(tmp_path):
    """A VM whose cgroup allows less than its guest RAM (standing in for a QEMU
    that leaks or is exploited): filling the RAM kills that QEMU, nothing else."""
    d = QemuDriver(tmp_path / "vms", templates=False,
                   allowance=VmAllowance(tcg_mib=0, kvm_mib=0))  # guest RAM, nothing for QEMU
    rec = Recorder()
    try:
        info = await d.start(VmSpec("jail-small", "small", memory_mib=256), rec)
        fill = "x = bytearray(150 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('no')"
        with pytest.raises(Exception):  # noqa: B017 - the channel dies with QEMU
            await d.exec("jail-small", ExecRequest(["python3", "-c", fill], timeout_s=120))
        for _ in range(100):
            if not Path(f"/proc/{info.pid}").exists():
                break
            await asyncio.sleep(0.1)
        assert not Path(f"/proc/{info.pid}").exists()
        assert (await d.launcher.priv.stats("jail-small"))["oom_kills"] >= 1
    finally:
        await d.destroy("jail-small", rec.by_sid.get("jail-small", {}))
        await d.close()
