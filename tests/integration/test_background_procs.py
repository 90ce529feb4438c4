"""Background processes and PTYs in a real microVM, through QemuDriver.proc."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import pytest_asyncio

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters.qemu import GuestError, QemuDriver
from services.host_agent.application.ports import ProcCall, ProcEvent, VmSpec

from .vm_support import Recorder, require

pytestmark = [pytest.mark.integration, pytest.mark.vm]
SID = "itest-bg"

require(("qemu-system-x86_64", "qemu-img"))


@pytest_asyncio.fixture(scope="module")
async def driver(tmp_path_factory):
    ensure_image("default")
    d = QemuDriver(Path(tmp_path_factory.mktemp("vms")))
    rec = Recorder()
    await d.start(VmSpec(SID, "itest"), rec)
    yield d
    await d.destroy(SID, rec.by_sid.get(SID, {}))
    await d.close()


class Sink:
    def __init__(self) -> None:
        self.events: list[ProcEvent] = []
        self.arrived = asyncio.Event()

    async def __call__(self, e: ProcEvent) -> None:
        self.events.append(e)
        self.arrived.set()

    def text(self, kind: str) -> str:
        return b"".join(e.data for e in self.events if e.kind == kind).decode()

    async def until(self, kind: str, needle: str, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.text(kind) or not any(e.kind == kind for e in self.events):
                self.arrived.clear()
                await self.arrived.wait()


async def test_spawn_streams_start_output_and_exit(driver):
    sink = Sink()
    ans = await driver.proc(SID, ProcCall("spawn", cmd=["sh", "-c", "echo hi; echo err >&2; exit 3"]),
                            sink)
    assert sink.events[0].kind == "start" and sink.events[0].pid > 1
    assert sink.text("stdout") == "hi\n" and sink.text("stderr") == "err\n"
    assert ans.exit is not None and ans.exit.exit_code == 3 and not ans.exit.timed_out


async def test_a_background_process_is_listed_and_killed(driver):
    ans = await driver.proc(SID, ProcCall("spawn", cmd=["sleep", "300"], tag="sleeper",
                                          env={"A": "1"}, attach=False))
    pid = ans.pid
    procs = (await driver.proc(SID, ProcCall("ps"))).procs
    mine = [p for p in procs if p.pid == pid]
    assert mine and mine[0].tag == "sleeper" and mine[0].cmd == ["sleep", "300"]
    assert mine[0].env == {"A": "1"} and mine[0].cwd == "/root"
    sink = Sink()
    waiter = asyncio.create_task(driver.proc(SID, ProcCall("attach", pid=pid), sink))
    await sink.until("start", "")
    await driver.proc(SID, ProcCall("signal", pid=pid, signal="SIGKILL"))
    end = await asyncio.wait_for(waiter, 30)
    assert end.exit.exit_code == -9
    assert pid not in [p.pid for p in (await driver.proc(SID, ProcCall("ps"))).procs]
    with pytest.raises(GuestError) as e:
        await driver.proc(SID, ProcCall("signal", pid=pid, signal="SIGKILL"))
    assert e.value.code == "ENOENT"


async def test_stdin_is_streamed_then_closed(driver):
    sink = Sink()
    run = asyncio.create_task(driver.proc(
        SID, ProcCall("spawn", cmd=["sh", "-c", "while read l; do echo got:$l; done; echo eof"],
                      stdin=True), sink))
    await sink.until("start", "")
    pid = sink.events[0].pid
    await driver.proc(SID, ProcCall("input", pid=pid, data=b"one\n"))
    await sink.until("stdout", "got:one")
    await driver.proc(SID, ProcCall("input", pid=pid, data=b"two\n", eof=True))
    end = await asyncio.wait_for(run, 30)
    assert sink.text("stdout") == "got:one\ngot:two\neof\n" and end.exit.exit_code == 0


async def test_detach_leaves_it_running_and_attach_picks_it_up(driver):
    first = Sink()
    cmd = ["sh", "-c", "echo a; read x; echo after:$x"]
    run = asyncio.create_task(driver.proc(SID, ProcCall("spawn", cmd=cmd, stdin=True), first))
    await first.until("stdout", "a\n")
    pid = first.events[0].pid
    run.cancel()  # the caller goes away: the process runs on
    with pytest.raises(asyncio.CancelledError):
        await run
    assert pid in [p.pid for p in (await driver.proc(SID, ProcCall("ps"))).procs]
    again = Sink()
    run2 = asyncio.create_task(driver.proc(SID, ProcCall("attach", pid=pid), again))
    await again.until("start", "")
    await driver.proc(SID, ProcCall("input", pid=pid, data=b"B\n"))
    end = await asyncio.wait_for(run2, 30)
    assert again.text("stdout") == "after:B\n" and end.exit.exit_code == 0
    assert "after" not in first.text("stdout")


async def test_a_pty_has_a_terminal_and_resizes(driver):
    sink = Sink()
    run = asyncio.create_task(driver.proc(
        SID, ProcCall("spawn", cmd=["/bin/bash", "--norc", "-i"], pty=(80, 24), user="user"),
        sink))
    await sink.until("start", "")
    pid = sink.events[0].pid
    await driver.proc(SID, ProcCall("input", pid=pid, data=b"tty; stty size; id -un\n"))
    await sink.until("pty", "24 80\r\nuser\r\n")
    assert "\r/dev/pts/0\r\n" in sink.text("pty")
    await driver.proc(SID, ProcCall("resize", pid=pid, pty=(100, 30)))
    await driver.proc(SID, ProcCall("input", pid=pid, data=b"stty size; exit 7\n"))
    end = await asyncio.wait_for(run, 30)
    assert "30 100" in sink.text("pty") and end.exit.exit_code == 7


async def test_timeout_kills_and_is_reported(driver):
    sink = Sink()
    end = await asyncio.wait_for(driver.proc(
        SID, ProcCall("spawn", cmd=["sleep", "60"], timeout_s=1), sink), 30)
    assert end.exit.timed_out and end.exit.exit_code == -9


async def test_bad_calls_are_refused_with_codes(driver):
    ans = await driver.proc(SID, ProcCall("spawn", cmd=["sleep", "30"], attach=False))
    cases = [(ProcCall("input", pid=ans.pid, data=b"x"), "EPIPE"),  # started without stdin
             (ProcCall("signal", pid=ans.pid, signal="SIGBOGUS"), "EINVAL"),
             (ProcCall("resize", pid=ans.pid, pty=(80, 24)), "EINVAL"),  # no PTY
             (ProcCall("attach", pid=999999), "ENOENT"),
             (ProcCall("spawn", cmd=["/no/such/binary"]), "ENOENT"),
             (ProcCall("spawn", cmd=["sh"], pty=(0, 24)), "EINVAL")]
    for call, code in cases:
        with pytest.raises(GuestError) as e:
            await driver.proc(SID, call, Sink() if call.action in ("spawn", "attach") else None)
        assert e.value.code == code, call
    await driver.proc(SID, ProcCall("signal", pid=ans.pid, signal="SIGKILL"))


async def test_connect_reaches_the_guests_own_loopback_only(driver):
    server = await driver.proc(SID, ProcCall("spawn", cmd=[
        "python3", "-c", "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 7007)); s.listen()\n"
        "while True:\n"
        "    c, _ = s.accept(); data = b''\n"
        "    while not data.endswith(b'!'):\n"
        "        data += c.recv(100)\n"
        "    c.sendall(data.upper()); c.close()\n"], attach=False))
    for _ in range(100):  # until it listens
        sink = Sink()
        try:
            end = await driver.proc(SID, ProcCall("connect", port=7007, data=b"hi!"), sink)
            break
        except GuestError as e:
            assert e.code == "ECONNREFUSED"
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the server never listened")
    assert sink.text("stdout") == "HI!" and end.exit.exit_code == 0
    sink = Sink()
    run = asyncio.create_task(driver.proc(SID, ProcCall("connect", port=7007, data=b"ab"),
                                          sink))
    await sink.until("start", "")
    conn_id = sink.events[0].pid
    assert conn_id not in [p.pid for p in (await driver.proc(SID, ProcCall("ps"))).procs]
    with pytest.raises(GuestError) as e:
        await driver.proc(SID, ProcCall("signal", pid=conn_id, signal="SIGKILL"))
    assert e.value.code == "EINVAL"
    await driver.proc(SID, ProcCall("input", pid=conn_id, data=b"cd!"))
    end = await asyncio.wait_for(run, 30)
    assert sink.text("stdout") == "ABCD!" and end.exit.exit_code == 0
    with pytest.raises(GuestError) as e:
        await driver.proc(SID, ProcCall("connect", port=7999), Sink())
    assert e.value.code == "ECONNREFUSED"
    await driver.proc(SID, ProcCall("signal", pid=server.pid, signal="SIGKILL"))


async def test_watch_streams_events_and_follows_new_subdirectories(driver):
    await driver.proc(SID, ProcCall("spawn", cmd=["mkdir", "-p", "/root/w"]), Sink())
    sink = Sink()
    run = asyncio.create_task(driver.proc(SID, ProcCall("watch", path="/root/w",
                                                        recursive=True), sink))
    await sink.until("start", "")
    await driver.proc(SID, ProcCall("spawn", cmd=["sh", "-c",
        "echo a > /root/w/f; mkdir /root/w/sub; sleep 0.3; echo b > /root/w/sub/g;"
        "mv /root/w/f /root/w/f2; chmod 600 /root/w/f2; rm /root/w/sub/g"]), Sink())
    await sink.until("events", '"name": "sub/g", "op": "remove"')
    lines = [json.loads(x) for x in sink.text("events").splitlines()]
    for want in ({"name": "f", "op": "create"}, {"name": "f", "op": "write"},
                 {"name": "sub", "op": "create"}, {"name": "sub/g", "op": "create"},
                 {"name": "f", "op": "rename"}, {"name": "f2", "op": "create"},
                 {"name": "f2", "op": "chmod"}, {"name": "sub/g", "op": "remove"}):
        assert want in lines, (want, lines)
    await driver.proc(SID, ProcCall("spawn", cmd=["rm", "-r", "/root/w"]), Sink())
    end = await asyncio.wait_for(run, 30)  # its directory went: the watch ends
    assert end.exit is not None


async def test_a_polled_watch_keeps_events_until_asked(driver):
    await driver.proc(SID, ProcCall("spawn", cmd=["mkdir", "-p", "/root/p"]), Sink())
    w = await driver.proc(SID, ProcCall("watch", path="/root/p", attach=False))
    await driver.proc(SID, ProcCall("spawn", cmd=["touch", "/root/p/x"]), Sink())
    got = (await driver.proc(SID, ProcCall("poll", pid=w.pid))).events
    assert {"name": "x", "op": "create"} in got
    assert (await driver.proc(SID, ProcCall("poll", pid=w.pid))).events == []
    await driver.proc(SID, ProcCall("close", pid=w.pid))
    with pytest.raises(GuestError) as e:
        await driver.proc(SID, ProcCall("poll", pid=w.pid))
    assert e.value.code == "ENOENT"
    for path, code in (("/root/p/x", "ENOTDIR"), ("/root/none", "ENOENT")):
        with pytest.raises(GuestError) as e:
            await driver.proc(SID, ProcCall("watch", path=path, attach=False))
        assert e.value.code == code
