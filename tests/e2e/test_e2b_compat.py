"""The unmodified `e2b` SDK (pinned in the test extras) against Corral's
E2B-compatible API, configured only by the environment variables that
`.corral/dev.env` holds: create with metadata and envs, get_info, list
(metadata and state filters), set_timeout, pause, connect (resumes), kill on
the FAKE driver; commands and files (envd, served by the gateway) in one real
QEMU microVM."""
import json
import os
import time
import uuid
from datetime import UTC, datetime

import e2b  # a test dependency (pyproject test extras): missing is a failure, not a skip
import httpx
import pytest

from corral_sdk.config import read_env_file

from .conftest import running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("e2bstack"), driver="fake") as st:
        yield st


@pytest.fixture
def e2b_env(stack, tmp_path, monkeypatch):
    """What `set -a; . .corral/dev.env` gives a shell."""
    path = tmp_path / "dev.env"
    stack.write_env_file(path)
    env = read_env_file(path)
    assert {"E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"} <= set(env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return env


def test_create_info_list_timeout_pause_connect_kill(e2b_env):
    from e2b import Sandbox, SandboxQuery, SandboxState
    run = uuid.uuid4().hex[:8]
    sb = Sandbox.create(metadata={"run": run, "who": "e2b"}, envs={"A": "1"}, timeout=600)
    other = Sandbox.create(template="base", metadata={"run": run, "who": "other"})
    info = sb.get_info()
    assert info.sandbox_id == sb.sandbox_id and info.template_id == "base"
    assert info.metadata == {"run": run, "who": "e2b"} and info.state == SandboxState.RUNNING
    assert (info.end_at - datetime.now(UTC)).total_seconds() > 500

    def listed(**query):
        pager = Sandbox.list(query=SandboxQuery(**query), limit=500)
        found = []
        while pager.has_next:
            found += pager.next_items()
        return {s.sandbox_id for s in found}
    assert listed(metadata={"run": run}) == {sb.sandbox_id, other.sandbox_id}
    assert listed(metadata={"run": run, "who": "e2b"}) == {sb.sandbox_id}

    sb.set_timeout(30)
    assert (sb.get_info().end_at - datetime.now(UTC)).total_seconds() < 60

    assert sb.pause() is not False
    assert Sandbox.get_info(sb.sandbox_id).state == SandboxState.PAUSED
    assert listed(metadata={"run": run}, state=[SandboxState.PAUSED]) == {sb.sandbox_id}
    assert listed(metadata={"run": run}, state=[SandboxState.RUNNING]) == {other.sandbox_id}
    back = Sandbox.connect(sb.sandbox_id, timeout=900)  # resumes it
    assert back.sandbox_id == sb.sandbox_id
    info = back.get_info()
    assert info.state == SandboxState.RUNNING
    assert (info.end_at - datetime.now(UTC)).total_seconds() > 800

    assert sb.kill() is True and other.kill() is True
    assert Sandbox.kill(sb.sandbox_id) is False  # already gone: E2B says False
    with pytest.raises(e2b.SandboxNotFoundException):
        Sandbox.get_info(sb.sandbox_id)
    assert listed(metadata={"run": run}) == set()


def test_errors_reach_the_e2b_sdk_as_its_own_exceptions(e2b_env, monkeypatch):
    from e2b import Sandbox
    with pytest.raises(e2b.SandboxNotFoundException):
        Sandbox.get_info("no-such-sandbox")
    with pytest.raises(e2b.SandboxException) as ei:  # Corral has no such image
        Sandbox.create(template="no-such-template")
    assert "no-such-template" in str(ei.value)
    monkeypatch.setenv("E2B_API_KEY", "crl_not_a_key")
    with pytest.raises(e2b.AuthenticationException):
        Sandbox.create()


def test_the_api_speaks_e2b_json_and_honours_tenancy(stack, e2b_env):
    url, key = e2b_env["E2B_API_URL"], e2b_env["E2B_API_KEY"]
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.get("/sandboxes/nope", headers={"X-API-KEY": key})
        assert r.status_code == 404
        body = r.json()
        assert body["code"] == 404 and body["message"] and body["op_id"]
        assert http.get("/v2/sandboxes").status_code == 401  # no key
        r = http.post("/v2/sandboxes", headers={"X-API-KEY": key}, json={"templateID": "Bad Name"})
        assert r.status_code == 400 and r.json()["code"] == 400
        r = http.post("/v2/sandboxes", headers={"X-API-KEY": key},
                      json={"templateID": "base", "metadata": {"t": "x"}})
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
        admin = {"Authorization": f"Bearer {stack.creds.admin_key}"}
        org = httpx.post(f"{stack.api_url}/v1/orgs", headers=admin,
                         json={"name": f"o-{uuid.uuid4().hex[:6]}"}).json()
        other = httpx.post(f"{stack.api_url}/v1/orgs/{org['id']}/api-keys", headers=admin,
                           json={"name": "k"}).json()["key"]
        theirs = {"X-API-KEY": other}
        assert http.get(f"/sandboxes/{sid}", headers=theirs).status_code == 404
        assert http.delete(f"/sandboxes/{sid}", headers=theirs).status_code == 404
        assert http.post(f"/sandboxes/{sid}/pause", headers=theirs).status_code == 404
        assert sid not in {s["sandboxID"] for s in http.get("/v2/sandboxes", headers=theirs).json()}
        r = http.get("/envd/health", headers={"E2b-Sandbox-Id": sid})  # no access token
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        token = http.post(f"/v2/sandboxes/{sid}/connect", headers={"X-API-KEY": key},
                          json={"timeout": 300}).json()["envdAccessToken"]
        ok = {"E2b-Sandbox-Id": sid, "X-Access-Token": token}
        assert http.get("/envd/health", headers=ok).status_code == 204
        assert http.get("/envd/health", headers={**ok, "X-Access-Token": token[:-2] + "AA"}
                        ).status_code == 401
        mine2 = http.post("/v2/sandboxes", headers={"X-API-KEY": key}, json={"templateID": "base"}).json()
        assert http.get("/envd/health", headers={"E2b-Sandbox-Id": mine2["sandboxID"],
                                                 "X-Access-Token": token}).status_code == 401
        r = http.post("/envd/process.Process/StreamInput", headers=ok, json={})
        assert r.status_code == 501 and r.json()["code"] == "unimplemented"
        r = http.post("/envd/process.Process/SendSignal", headers=ok,
                      json={"process": {"pid": 5}, "signal": "SIGNAL_SIGHUP"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        r = http.post("/envd/process.Process/SendInput", headers=ok, json={"process": {}})
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        from services.api_gateway.entrypoints import connect_wire as cw
        for msg in ({"process": []}, {"process": {"cmd": 5}}, {"process": {"cmd": "x", "envs": [1]}}):
            r = http.post("/envd/process.Process/Start", content=cw.envelope(msg),
                          headers={**ok, "Content-Type": cw.STREAM_TYPE})
            assert r.status_code == 200 and r.content[0] == cw.END_STREAM, r.content
            assert json.loads(r.content[5:])["error"]["code"] == "invalid_argument", (msg, r.content)
        r = http.post("/envd/filesystem.Filesystem/Stat", headers=ok, json={"path": ""})
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        http.delete(f"/sandboxes/{mine2['sandboxID']}", headers={"X-API-KEY": key})
        assert http.delete(f"/sandboxes/{sid}", headers={"X-API-KEY": key}).status_code == 204
    assert os.environ["E2B_API_URL"].endswith("/e2b")


# ---- envd: commands and files in one real microVM ----------------------------------
@pytest.fixture(scope="module")
def vm_env(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("e2bvm"), driver="qemu") as st:
        path = tmp_path_factory.mktemp("e2benv") / "dev.env"
        st.write_env_file(path)
        yield read_env_file(path)


@pytest.fixture(scope="module")
def vm_box(vm_env):
    mp = pytest.MonkeyPatch()
    for k, v in vm_env.items():
        mp.setenv(k, v)
    from e2b import Sandbox
    sb = Sandbox.create(envs={"GREETING": "hi"}, timeout=900, request_timeout=300)
    yield sb
    sb.kill()
    mp.undo()


@pytest.mark.vm
class TestEnvd:
    def test_commands_run(self, vm_box):
        from e2b import CommandExitException
        assert vm_box.is_running()
        r = vm_box.commands.run("echo $GREETING; echo oops >&2")
        assert (r.exit_code, r.stdout, r.stderr) == (0, "hi\n", "oops\n")
        with pytest.raises(CommandExitException) as ei:
            vm_box.commands.run("echo out; exit 3")
        assert ei.value.exit_code == 3 and ei.value.stdout == "out\n"
        seen = []
        r = vm_box.commands.run("for i in 1 2 3; do echo $i; sleep 0.3; done", on_stdout=seen.append)
        assert "".join(seen) == r.stdout == "1\n2\n3\n" and len(seen) >= 2  # streamed
        r = vm_box.commands.run("pwd; echo $X", cwd="/tmp", envs={"X": "x"})
        assert r.stdout == "/tmp\nx\n"
        assert vm_box.commands.run("id -un; pwd", user="user").stdout == "user\n/home/user\n"
        assert vm_box.commands.run("id -un").stdout == "root\n"  # Corral's default

    def test_files(self, vm_box):
        from e2b import FileType
        fs = vm_box.files
        info = fs.write("/root/e2b/hello.txt", "hello")
        assert info.path == "/root/e2b/hello.txt"
        assert fs.read("/root/e2b/hello.txt") == "hello"
        blob = os.urandom(3 << 20)  # 3 MiB of binary
        fs.write("/root/e2b/blob.bin", blob)
        assert bytes(fs.read("/root/e2b/blob.bin", format="bytes")) == blob
        big = os.urandom(9 << 20)  # over one piece: uploaded and read in pieces
        fs.write("/root/e2b/big.bin", big)
        assert bytes(fs.read("/root/e2b/big.bin", format="bytes")) == big
        fs.remove("/root/e2b/big.bin")
        written = fs.write_files([{"path": "/root/e2b/m/one.txt", "data": "1"},
                                  {"path": "/root/e2b/m/two.bin", "data": b"\x00\x02"}])
        assert sorted(w.path for w in written) == ["/root/e2b/m/one.txt", "/root/e2b/m/two.bin"]
        assert fs.read("/root/e2b/m/one.txt") == "1"
        assert bytes(fs.read("/root/e2b/m/two.bin", format="bytes")) == b"\x00\x02"
        fs.remove("/root/e2b/m")
        assert fs.exists("/root/e2b/hello.txt") and not fs.exists("/root/e2b/nope")
        assert fs.make_dir("/root/e2b/sub") is True and fs.make_dir("/root/e2b/sub") is False
        names = {e.name: e.type for e in fs.list("/root/e2b")}
        assert names == {"hello.txt": FileType.FILE, "blob.bin": FileType.FILE, "sub": FileType.DIR}
        moved = fs.rename("/root/e2b/hello.txt", "/root/e2b/sub/moved.txt")
        assert moved.path == "/root/e2b/sub/moved.txt" and fs.get_info(moved.path).size == 5
        assert [e.name for e in fs.list("/root/e2b", depth=2) if e.name == "moved.txt"]
        fs.remove("/root/e2b")
        assert not fs.exists("/root/e2b")
        assert vm_box.commands.run("ls /root/e2b || echo gone").stdout.endswith("gone\n")


    def test_background_commands_list_stdin_connect_kill(self, vm_box):
        from e2b import CommandExitException
        cmds = vm_box.commands
        h = cmds.run("while read l; do echo got:$l; done; echo eof", background=True, stdin=True)
        assert h.pid in [p.pid for p in cmds.list()]
        cmds.send_stdin(h.pid, "one\n")
        cmds.send_stdin(h.pid, b"two\n")
        cmds.close_stdin(h.pid)
        r = h.wait()
        assert (r.exit_code, r.stdout) == (0, "got:one\ngot:two\neof\n")
        assert h.pid not in [p.pid for p in cmds.list()]

        h2 = cmds.run("echo started; sleep 600", background=True, envs={"K": "v"}, cwd="/tmp")
        info = next(p for p in cmds.list() if p.pid == h2.pid)
        assert (info.cmd, info.args[-1], info.envs, info.cwd) == (
            "/bin/bash", "echo started; sleep 600", {"K": "v"}, "/tmp")
        h2.disconnect()  # the process runs on
        assert h2.pid in [p.pid for p in cmds.list()]
        again = cmds.connect(h2.pid)
        assert cmds.kill(h2.pid) is True
        with pytest.raises(CommandExitException) as ei:
            again.wait()
        assert ei.value.exit_code != 0
        assert cmds.kill(h2.pid) is False  # gone: E2B says False
        assert h2.pid not in [p.pid for p in cmds.list()]

    def test_pty_create_input_resize(self, vm_box):
        from e2b import CommandExitException, PtySize
        out: list[bytes] = []
        h = vm_box.pty.create(PtySize(cols=80, rows=24), user="user")
        vm_box.pty.send_stdin(h.pid, b"stty size; id -un\n")
        for _, _, pty in h:  # until the shell answered
            out.append(bytes(pty or b""))
            if b"\nuser" in b"".join(out):
                break
        vm_box.pty.resize(h.pid, PtySize(cols=120, rows=40))
        vm_box.pty.send_stdin(h.pid, b"stty size; exit 5\n")
        with pytest.raises(CommandExitException) as ei:
            h.wait(on_pty=lambda b: out.append(bytes(b)))
        assert ei.value.exit_code == 5
        text = b"".join(out).decode(errors="replace")
        assert "24 80" in text and "\nuser" in text and "40 120" in text, text

    def test_watch_dir(self, vm_box):
        from e2b import FilesystemEventType as T
        fs = vm_box.files
        fs.make_dir("/root/wd")
        handle = fs.watch_dir("/root/wd", recursive=True)
        fs.write("/root/wd/a.txt", "x")
        vm_box.commands.run("mkdir /root/wd/s && sleep 0.3 && echo y > /root/wd/s/b && "
                            "chmod 600 /root/wd/s/b && rm /root/wd/a.txt")
        events: list = []
        for _ in range(100):
            events += handle.get_new_events()
            if ("a.txt", T.REMOVE) in {(e.name, e.type) for e in events}:
                break
            time.sleep(0.1)
        handle.stop()
        seen = {(e.name, e.type) for e in events}
        for want in (("a.txt", T.CREATE), ("s", T.CREATE), ("s/b", T.CREATE), ("s/b", T.WRITE),
                     ("s/b", T.CHMOD), ("a.txt", T.REMOVE)):
            assert want in seen, (want, seen)
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError
        from e2b.envd.filesystem import filesystem_pb
        with pytest.raises(ConnectError) as ei:  # stopped: the guest forgot it
            fs._rpc.get_watcher_events(filesystem_pb.GetWatcherEventsRequest(
                watcher_id=handle._watcher_id))
        assert ei.value.code == Code.NOT_FOUND
