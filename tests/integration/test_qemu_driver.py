"""QemuDriver against real QEMU microVMs (TCG here; KVM where it works)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import pytest_asyncio

from guest import protocol as P

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters import procs
from services.host_agent.adapters.qemu import GuestError, GuestPathError, QemuDriver
from services.host_agent.application.ports import ExecChunk, ExecRequest, VmSpec

from .vm_support import Recorder, require

pytestmark = [pytest.mark.integration, pytest.mark.vm]
REPO = Path(__file__).resolve().parents[2]
SID = "itest-main"

require(("qemu-system-x86_64", "qemu-img"))


@pytest.fixture(scope="module")
def image():
    return ensure_image("default")


@pytest.fixture(scope="module")
def state_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vms")


@pytest_asyncio.fixture(scope="module")
async def driver(image, state_root):
    d = QemuDriver(state_root)
    yield d
    await d.close()


@pytest_asyncio.fixture(scope="module")
async def vm(driver):
    rec = Recorder()
    info = await driver.start(VmSpec(SID, "itest", env={"SPEC_VAR": "from-spec"}), rec)
    yield info
    await driver.destroy(SID, rec.by_sid.get(SID, {}))


def run(cmd: list[str], **kw) -> ExecRequest:
    return ExecRequest(cmd, **kw)


async def test_exec_round_trip_and_exit_codes(driver, vm):
    assert vm.accel in ("kvm", "tcg") and vm.pid
    r = await driver.exec(SID, run(["python3", "-c", "print(6 * 7)"]))
    assert (r.exit_code, r.stdout, r.timed_out, r.truncated) == (0, b"42\n", False, False)
    r = await driver.exec(SID, run(["sh", "-c", "exit 7"]))
    assert r.exit_code == 7
    r = await driver.exec(SID, run(["/no/such/binary"]))
    assert r.exit_code == 127 and r.stderr


async def test_stdin_is_delivered(driver, vm):
    blob = os.urandom(200_000)
    r = await driver.exec(SID, run(["sha256sum"], stdin=blob))
    assert r.stdout.split()[0].decode() == hashlib.sha256(blob).hexdigest()
    r = await driver.exec(SID, run(["cat"]))  # no stdin: /dev/null, not a hang
    assert (r.exit_code, r.stdout) == (0, b"")


async def test_env_and_cwd(driver, vm):
    r = await driver.exec(SID, run(["sh", "-c", 'echo "$A|$SPEC_VAR|$(pwd)"'],
                                   env={"A": "1"}, cwd="/tmp"))
    assert r.stdout == b"1|from-spec|/tmp\n"
    with pytest.raises(GuestError) as ei:
        await driver.exec(SID, run(["true"], cwd="/does/not/exist"))
    assert ei.value.code == "ENOENT"


async def test_timeout_kills_the_process_group(driver, vm):
    r = await driver.exec(SID, run(["sh", "-c", "sleep 300 & echo $!; sleep 300"], timeout_s=1))
    assert r.timed_out and r.exit_code == -signal.SIGKILL
    bg = int(r.stdout.strip())
    alive = await driver.exec(SID, run(["sh", "-c", f"kill -0 {bg}"]))
    assert alive.exit_code != 0


async def test_stdout_stderr_streamed_separately(driver, vm):
    chunks: list[ExecChunk] = []

    async def on_chunk(c: ExecChunk) -> None:
        chunks.append(c)

    script = "import sys\nfor i in range(3):\n print('o',i,flush=True); print('e',i,file=sys.stderr,flush=True)"
    r = await driver.exec(SID, run(["python3", "-c", script]), on_chunk)
    assert r.stdout == b"o 0\no 1\no 2\n" and r.stderr == b"e 0\ne 1\ne 2\n"
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == r.stdout
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == r.stderr


async def test_output_cap_truncates(driver, vm):
    r = await driver.exec(SID, run(["head", "-c", "300000", "/dev/zero"], output_cap=1000))
    assert r.exit_code == 0 and r.truncated and r.stdout == b"\0" * 1000


async def test_concurrent_execs_multiplex(driver, vm):
    rs = await asyncio.gather(*(driver.exec(SID, run(["sh", "-c", f"sleep 0.{i}; echo {i}"]))
                                for i in range(5)))
    assert [r.stdout for r in rs] == [f"{i}\n".encode() for i in range(5)]


async def test_binary_file_round_trip_and_list(driver, vm):
    data = os.urandom(1 << 20)
    await driver.put_file(SID, "/root/data/blob.bin", data)
    assert await driver.get_file(SID, "/root/data/blob.bin") == data
    r = await driver.exec(SID, run(["sha256sum", "/root/data/blob.bin"]))
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    await driver.exec(SID, run(["mkdir", "/root/data/sub"]))
    listing = await driver.list_files(SID, "/root/data")
    entries = {e.name: e for e in listing.entries}
    assert set(entries) == {"blob.bin", "sub"} and not listing.truncated
    assert entries["blob.bin"].size == 1 << 20 and not entries["blob.bin"].is_dir
    assert entries["sub"].is_dir


async def test_a_huge_directory_lists_and_odd_names_round_trip(driver, vm):
    """5,000 entries (a header over 64 KiB before) and names that are not UTF-8:
    the guest answers, stays alive, and the exact bytes come back."""
    make = ("import os\nos.makedirs('/root/many', exist_ok=True)\nstem = 'n' * 100\n"
            "for i in range(5000):\n    open('/root/many/%s%d' % (stem, i), 'w').close()\n")
    r = await driver.exec(SID, run(["python3", "-c", make], timeout_s=120))
    assert r.exit_code == 0, r.stderr
    listing = await driver.list_files(SID, "/root/many")
    assert len(listing.entries) == 5000 and not listing.truncated
    more = make.replace("range(5000)", "range(5000, 10100)")
    assert (await driver.exec(SID, run(["python3", "-c", more], timeout_s=120))).exit_code == 0
    listing = await driver.list_files(SID, "/root/many")  # past MAX_LIST: cut and flagged
    assert len(listing.entries) == P.MAX_LIST and listing.truncated
    odd = b"/root/caf\xe9-\xff.txt"
    await driver.put_file(SID, odd, b"odd")
    names = {e.name_b64: e.name for e in (await driver.list_files(SID, "/root")).entries}
    import base64
    b64 = base64.b64encode(odd.rsplit(b"/", 1)[1]).decode()
    assert b64 in names and "\ufffd" in names[b64]  # shown with U+FFFD, carried exactly
    assert await driver.get_file(SID, odd) == b"odd"
    assert (await driver.exec(SID, run(["true"]))).exit_code == 0  # still alive


@pytest.mark.parametrize("path", ["relative/x", "/tmp/../etc/passwd", "/tmp/a\x00b", "/tmp//x"])
async def test_path_checks_on_host(driver, vm, path):
    with pytest.raises(GuestPathError):
        await driver.get_file(SID, path)
    with pytest.raises(GuestPathError):
        await driver.put_file(SID, path, b"x")


async def test_path_checks_and_errors_in_guest(driver, vm):
    agent = driver.launcher.agent(SID)  # bypass host validation: the guest must refuse too
    for bad in ("etc/passwd", "/tmp/../etc/passwd"):
        with pytest.raises(GuestError) as ei:
            await agent.request({"op": "get", "path": bad})
        assert ei.value.code == "EINVAL"
    with pytest.raises(GuestError) as ei:
        await driver.get_file(SID, "/no/such/file")
    assert ei.value.code == "ENOENT"
    with pytest.raises(GuestError) as ei:
        await driver.get_file(SID, "/etc")
    assert ei.value.code == "EISDIR"
    with pytest.raises(GuestError) as ei:
        await agent.request({"op": "bogus"})
    assert ei.value.code == "EBADOP"


async def test_pause_blocks_guest_until_resume(driver, vm):
    await driver.pause(SID)
    try:
        assert await driver.launcher.qmp(SID).status() == "paused"
        task = asyncio.ensure_future(driver.exec(SID, run(["echo", "after"])))
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert not done, "a paused guest must not answer"
    finally:
        await driver.resume(SID)
    assert await driver.launcher.qmp(SID).status() == "running"
    r = await asyncio.wait_for(task, 30)
    assert r.stdout == b"after\n"


async def test_is_alive_rejects_foreign_pid(driver, vm):
    assert await driver.is_alive(SID, {"pid": str(vm.pid)})
    assert not await driver.is_alive(SID, {"pid": str(os.getpid())})
    assert not await driver.is_alive("other", {"pid": str(vm.pid)})


async def test_destroy_removes_everything(driver, state_root):
    rec = Recorder()
    sid = "itest-destroy"
    info = await driver.start(VmSpec(sid, None), rec)
    res = dict(rec.by_sid[sid])
    assert set(res) >= {"dir", "overlay", "qmp_socket", "agent_socket", "pid"}
    assert Path(res["overlay"]).exists() and Path(res["agent_socket"]).exists()
    await driver.destroy(sid, res)
    assert not procs.is_ours(info.pid, sid, state_root)
    assert await procs.wait_exit(info.pid, 1)
    for kind in ("overlay", "qmp_socket", "agent_socket", "dir"):
        assert not Path(res[kind]).exists(), kind
    assert not await driver.is_alive(sid, res)


async def test_main_vm_survived_other_tests(driver, vm):
    assert await driver.is_alive(SID, {"pid": str(vm.pid)})
    r = await driver.exec(SID, run(["true"]))
    assert r.exit_code == 0


CHILD = textwrap.dedent("""
    import asyncio, json, os, sys
    sys.path.insert(0, {repo!r})
    from services.host_agent.adapters.qemu import QemuDriver
    from services.host_agent.application.ports import VmSpec
    log = open({log!r}, "a")
    async def rec(sid, kind, value):
        log.write(json.dumps([sid, kind, value]) + "\\n"); log.flush(); os.fsync(log.fileno())
        if kind == "pid" and value:
            print("PID", value, flush=True)
    async def main():
        await QemuDriver({root!r}, accel={accel!r}).start(VmSpec({sid!r}, None), rec)
        print("READY", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


async def crash_during_boot(state_root: Path, sid: str, accel: str, tmp: Path) -> dict:
    """Start a VM in a child process, SIGKILL the child once QEMU's pid is recorded."""
    log = tmp / f"{sid}.records"
    code = CHILD.format(repo=str(REPO), log=str(log), root=str(state_root), sid=sid,
                        accel=accel)
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.startswith(b"PID"), line
    finally:
        child.kill()
        await child.wait()
    recorded: dict[str, str] = {}
    for ln in log.read_text().splitlines():
        _, kind, value = json.loads(ln)
        if value is None:
            recorded.pop(kind, None)
        else:
            recorded[kind] = value
    return recorded


def qemu_for(sid: str, state_root: Path) -> int | None:
    return procs.find_ours(state_root).get(sid)


@pytest.fixture
def crash_root(tmp_path_factory) -> Path:
    # Its own root: reconcile kills every unrecorded QEMU under the root it manages.
    return tmp_path_factory.mktemp("crash")


async def test_reconcile_kills_unrecorded_qemu_after_crash(driver, crash_root, tmp_path):
    state_root = crash_root
    sid = "itest-crash"
    recorded = await crash_during_boot(state_root, sid, driver.accel, tmp_path)
    pid = int(recorded["pid"])
    assert qemu_for(sid, state_root) == pid  # QEMU outlived its parent
    fresh = QemuDriver(state_root, accel=driver.accel)
    rec = Recorder()
    report = await fresh.reconcile({}, rec)  # the records were lost with the agent
    assert sid in report.killed_unrecorded
    assert await procs.wait_exit(pid, 5)
    assert qemu_for(sid, state_root) is None
    assert not (state_root / sid).exists()
    await fresh.close()


async def test_reconcile_adopts_recorded_vm_after_crash(driver, crash_root, tmp_path):
    state_root = crash_root
    sid = "itest-adopt"
    recorded = await crash_during_boot(state_root, sid, driver.accel, tmp_path)
    fresh = QemuDriver(state_root, accel=driver.accel)
    rec = Recorder()
    dead = {"itest-gone": {"dir": str(state_root / "itest-gone"), "pid": "999999999"}}
    (state_root / "itest-gone").mkdir()
    report = await fresh.reconcile({sid: recorded, **dead}, rec)
    try:
        assert report.adopted == [sid]
        assert "itest-gone" in report.cleaned and not (state_root / "itest-gone").exists()
        r = await fresh.exec(sid, run(["echo", "adopted"]))
        assert r.stdout == b"adopted\n"
    finally:
        await fresh.destroy(sid, recorded)
        await fresh.close()
    assert qemu_for(sid, state_root) is None
    assert not (state_root / sid).exists()
