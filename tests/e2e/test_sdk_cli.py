"""The Python SDK and the `corral` CLI against real stacks: control-plane
behaviour on the FAKE driver, exec/files/SSE in ONE real QEMU microVM."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from corral_sdk import (ArgumentError, AsyncSandbox, AuthError, ConflictError, NotFoundError, Sandbox,
                        Snapshot, ValidationError)
from corral.devstack import REPO

from .conftest import running_stack

pytestmark = pytest.mark.e2e


def cli_env(st) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_API_URL": st.api_url,
            "CORRAL_API_KEY": st.creds.api_key, "CORRAL_NATS_URL": st.nats_url}


def corral(st, *args, cwd, timeout=180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral", *args], env=cli_env(st), cwd=cwd,
                          capture_output=True, timeout=timeout, **kw)


HEADER_ECHO = """
import json
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
HTTPServer(("127.0.0.1", 8002), H).serve_forever()
"""
WS_ECHO = r"""
import base64, hashlib, socket, struct, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8765))
s.listen()

def frame(op, data):
    n = len(data)
    size = bytes([n]) if n < 126 else (b"\x7e" + struct.pack(">H", n) if n < 65536
                                       else b"\x7f" + struct.pack(">Q", n))
    return bytes([0x80 | op]) + size + data

def serve(c):
    req = b""
    while b"\r\n\r\n" not in req:
        req += c.recv(4096)
    lines = req.split(b"\r\n")
    target = lines[0].split(b" ")[1]
    key = [l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    f = c.makefile("rb")
    while True:
        b1, b2 = f.read(2)
        op, n = b1 & 15, b2 & 127
        if n == 126:
            n = struct.unpack(">H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4)
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(f.read(n)))
        if op == 8:
            c.sendall(frame(8, b"\x03\xe8"))
            c.close()
            return
        c.sendall(frame(op, b"echo:" + data + ((b" " + target) if op == 1 else b"")))

while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


# ---- control plane (FAKE driver: no guest, so no exec/files here) ------------
@pytest.fixture(scope="class")
def fake(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("sdkfake"), driver="fake") as st:
        yield st


@pytest.fixture(scope="class")
def kw(fake):
    return {"api_url": fake.api_url, "api_key": fake.creds.api_key}


class TestControlPlane:
    def test_create_connect_list_events_kill(self, kw):
        sb = Sandbox.create(name="sdk-a", env={"A": "1"}, metadata={"team": "x"}, ttl_seconds=600, **kw)
        assert sb.state == "running" and sb.name == "sdk-a" and sb.info["metadata"] == {"team": "x"}
        again = Sandbox.connect(sb.id, **kw)
        assert again.id == sb.id and again.refresh().state == "running"
        assert [s.id for s in Sandbox.list(name="sdk-a", **kw)] == [sb.id]
        assert sb.id in {s.id for s in Sandbox.list(state="running", **kw)}
        types = [e["type"] for e in sb.events()]
        assert types[:4] == ["SandboxRequested", "SandboxScheduled", "SandboxStarting", "SandboxStarted"]
        assert sb.kill(wait=True).state == "destroyed"
        assert sb.kill().state == "destroyed"  # idempotent

    def test_idempotent_create_returns_the_same_sandbox(self, kw):
        key = f"e2e-{uuid.uuid4()}"
        a = Sandbox.create(idempotency_key=key, **kw)
        b = Sandbox.create(idempotency_key=key, **kw)
        assert a.id == b.id
        a.kill()

    def test_typed_errors(self, kw, fake):
        with pytest.raises(ArgumentError, match="name must be a DNS label"):
            Sandbox.create(name="Not_A_Label", **kw)  # caught before it is sent
        with pytest.raises(ValidationError) as ei:  # what only the server knows
            Sandbox.create(metadata={f"k{i}": "v" for i in range(65)}, **kw)
        assert ei.value.status == 422 and ei.value.op_id and ei.value.errors
        with pytest.raises(NotFoundError):
            Sandbox.connect("does-not-exist", **kw)
        with pytest.raises(AuthError) as ei:
            Sandbox.list(api_url=fake.api_url, api_key="crl_wrong")
        assert ei.value.status == 401
        sb = Sandbox.create(name="sdk-dup", **kw)
        with pytest.raises(ConflictError):
            Sandbox.create(name="sdk-dup", **kw)
        with pytest.raises(ConflictError):  # not running any more
            sb.kill(wait=True).files.read("/etc/hostname")

    def test_context_managers_kill_even_when_the_body_raises(self, kw):
        with pytest.raises(RuntimeError):
            with Sandbox.create(**kw) as sb:
                raise RuntimeError("body failed")
        assert Sandbox.connect(sb.id, **kw).state in ("stopping", "stopped", "destroyed")

        async def go():
            async with await AsyncSandbox.create(name="sdk-async", **kw) as asb:
                assert (await asb.refresh()).state == "running"
                assert next(e["type"] for e in await asb.events()) == "SandboxRequested"
                found = await AsyncSandbox.list(name="sdk-async", **kw)
                assert [s.id for s in found] == [asb.id]
            return asb.id
        sid = asyncio.run(go())
        assert Sandbox.connect(sid, **kw).state in ("stopping", "stopped", "destroyed")

    def test_cli_create_list_show_rm(self, fake, tmp_path):
        r = corral(fake, "sandbox", "create", "--name", "cli-a", "--env", "K=V", "--ttl", "600",
                   "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["state"] == "running" and r.stderr == b""  # no spinner when not a TTY
        r = corral(fake, "sandbox", "list", "--state", "running", "--json", cwd=tmp_path)
        assert doc["id"] in {d["id"] for d in json.loads(r.stdout)}
        r = corral(fake, "sandbox", "list", cwd=tmp_path)
        assert r.stdout.startswith(b"ID") and b"cli-a" in r.stdout
        assert json.loads(corral(fake, "sandbox", "show", "cli-a", cwd=tmp_path).stdout)["id"] == doc["id"]
        r = corral(fake, "sandbox", "rm", doc["id"], "--wait", cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.decode().split() == [doc["id"], "destroyed"]
        r = corral(fake, "sandbox", "show", "nope", cwd=tmp_path)
        assert r.returncode == 1 and b"404" in r.stderr and b"Traceback" not in r.stderr


    def test_sdk_snapshot_fork_metadata_pause_resume(self, kw):
        src = Sandbox.create(metadata={"suite": "snap"}, **kw)
        snap = src.snapshot("sdk-base", ttl_seconds=600)
        assert snap.state == "ready" and snap.sandbox_id == src.id
        assert snap.id in [s.id for s in Snapshot.list(**kw)]
        forks = Snapshot.get(snap.id, **kw).fork(2, metadata={"suite": "snap", "fork": "1"})
        assert len({f.id for f in forks}) == 2 and {f.state for f in forks} == {"running"}
        tagged = {s.id for s in Sandbox.list(metadata={"suite": "snap"}, **kw)}
        assert {src.id, *(f.id for f in forks)} <= tagged
        assert {s.id for s in Sandbox.list(metadata={"fork": "1"}, **kw)} == {f.id for f in forks}
        src.pause()  # 202: asked; the state follows
        wait_state(src, "paused")
        src.resume()
        wait_state(src, "running")
        assert snap.delete().state in ("deleting", "deleted")
        for sb in (src, *forks):
            sb.kill()

    def test_cli_lifecycle_snapshot_fork(self, fake, tmp_path):
        sid = corral(fake, "sandbox", "create", "--meta", "suite=cli", cwd=tmp_path).stdout.decode().strip()
        for verb, state in (("pause", "paused"), ("resume", "running"), ("stop", "stopped"),
                            ("start", "running")):
            r = corral(fake, "sandbox", verb, sid, "--wait", cwd=tmp_path)
            assert r.returncode == 0 and r.stdout.decode().split() == [sid, state], r.stderr
        r = corral(fake, "sandbox", "ttl", sid, "3600", cwd=tmp_path)
        assert r.returncode == 0 and b"expires_at" in r.stdout, r.stderr
        r = corral(fake, "sandbox", "list", "--meta", "suite=cli", "--json", cwd=tmp_path)
        assert [d["id"] for d in json.loads(r.stdout)] == [sid]
        r = corral(fake, "snapshot", "take", sid, "cli-base", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        snap_id = r.stdout.decode().strip()
        r = corral(fake, "snapshot", "fork", "cli-base", "-n", "2", cwd=tmp_path)
        lines = [ln.split() for ln in r.stdout.decode().splitlines()]
        assert r.returncode == 0 and len(lines) == 2 and {st for _, st in lines} == {"running"}
        assert b"cli-base" in corral(fake, "snapshot", "ls", cwd=tmp_path).stdout
        r = corral(fake, "snapshot", "rm", snap_id, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.decode().split()[0] == snap_id
        for ref in (sid, *(i for i, _ in lines)):
            assert corral(fake, "sandbox", "rm", ref, cwd=tmp_path).returncode == 0
        r = corral(fake, "sandbox", "create", "--vcpus", "0", cwd=tmp_path)
        assert r.returncode == 1 and b"vcpus must be" in r.stderr and b"Traceback" not in r.stderr

    def test_the_sdk_installs_alone_and_works(self, fake, tmp_path):
        """corral-sdk into a fresh venv: only httpx and its dependencies come
        with it, and its `corral` (no server commands) drives the stack."""
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        r = subprocess.run([*pip, "install", "-q", str(REPO / "sdk" / "python")],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True,
                           timeout=120, check=True)
        names = {p["name"].lower().replace("_", "-") for p in json.loads(r.stdout)} - {
            "pip", "setuptools", "wheel"}
        assert names <= {"corral-sdk", "httpx", "httpcore", "h11", "anyio", "idna", "certifi",
                         "sniffio", "typing-extensions", "exceptiongroup"}, names
        assert {"corral-sdk", "httpx"} <= names
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
               "CORRAL_API_URL": fake.api_url, "CORRAL_API_KEY": fake.creds.api_key}
        run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        r = subprocess.run(["corral", "--help"], **run)
        assert r.returncode == 0 and "sandbox" in r.stdout and " up " not in r.stdout
        r = subprocess.run(["corral", "sandbox", "create", "--name", "alone", "--meta", "via=venv"], **run)
        assert r.returncode == 0, r.stderr
        sid = r.stdout.strip()
        code = ("import corral_sdk, sys\n"
                "from corral_sdk import Sandbox\n"
                "[sb] = Sandbox.list(metadata={'via': 'venv'})\n"
                "assert sb.id == sys.argv[1] and sb.name == 'alone'\n"
                "sb.kill(wait=True)\n"
                "try:\n    import corral\nexcept ImportError:\n    print('no server code')\n")
        r = subprocess.run(["python", "-c", code, sid], **run)
        assert r.returncode == 0 and r.stdout == "no server code\n", r.stderr


def wait_state(sb, want, timeout=30):
    deadline = time.monotonic() + timeout
    while sb.refresh().state != want:
        assert time.monotonic() < deadline, f"{sb.id} still {sb.state}, wanted {want}"
        time.sleep(0.1)


# ---- one real microVM: exec (plain + SSE), files, CLI exec/cp, events tail ----
@pytest.fixture(scope="class")
def vm(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("sdkvm"), driver="qemu") as st:
        yield st


@pytest.fixture(scope="class")
def box(vm):
    sb = Sandbox.create(name="sdk-vm", env={"GREETING": "hi"}, timeout=240,
                        api_url=vm.api_url, api_key=vm.creds.api_key)
    yield sb
    sb.kill()


@pytest.mark.vm
class TestOneMicroVM:
    def test_exec_plain(self, box):
        res = box.exec(["python3", "-c", "import os,sys; print(os.environ['GREETING']);"
                        "print('err', file=sys.stderr); sys.exit(3)"])
        assert (res.exit_code, res.stdout, res.stderr, res.timed_out) == (3, "hi\n", "err\n", False)
        res = box.exec("cat; pwd; echo $X", stdin="in\n", cwd="/tmp", env={"X": "x"})
        assert res.ok and res.stdout == "in\n/tmp\nx\n"
        assert box.exec(["sleep", "30"], timeout=1).timed_out
        res = box.exec("id -un; pwd; echo $HOME; touch x && stat -c %U x", user="user")
        assert res.stdout == "user\n/home/user\n/home/user\nuser\n", res.stderr
        assert box.exec("cat /root/.profile", user="user").exit_code != 0  # not root's

    def test_files_stat_mkdir_rename_remove(self, vm, box):
        f = box.files
        assert f.make_dir("/root/t/a/b").type == "dir"
        assert f.make_dir("/root/t/a/b").is_dir  # parents=True: an existing one is fine
        with pytest.raises(ConflictError):
            f.make_dir("/root/t/a/b", parents=False)
        f.write("/root/t/a/b/f.txt", b"12345")
        st = f.stat("/root/t/a/b/f.txt")
        assert (st.name, st.size, st.type, st.is_dir) == ("f.txt", 5, "file", False)
        assert abs(st.mtime - time.time()) < 600
        assert box.exec("ln -s /etc/hostname /root/t/ln").ok
        ln = f.stat("/root/t/ln")
        assert (ln.type, ln.target) == ("symlink", "/etc/hostname")
        moved = f.rename("/root/t/a/b/f.txt", "/root/t/g.txt")
        assert moved.path == "/root/t/g.txt" and f.read("/root/t/g.txt") == b"12345"
        assert not f.exists("/root/t/a/b/f.txt") and f.exists("/root/t/g.txt")
        with pytest.raises(NotFoundError):
            f.stat("/root/t/nope")
        with pytest.raises(ConflictError):  # not empty
            f.remove("/root/t/a")
        tree = {(e.name, e.is_dir) for e in f.list("/root/t", depth=3)}
        assert {("a", True), ("a/b", True), ("g.txt", False), ("ln", False)} <= tree
        assert ("a/b", True) not in {(e.name, e.is_dir) for e in f.list("/root/t")}
        assert {e.name for e in f.list("/root/t", depth=2)} == {"a", "a/b", "g.txt", "ln"}
        with pytest.raises(ArgumentError):
            f.list("/root/t", depth=9)
        f.remove("/root/t/ln")
        assert box.exec("cat /etc/hostname").ok  # the link went, not its target
        f.remove("/root/t", recursive=True)
        assert not f.exists("/root/t")
        with pytest.raises(NotFoundError):
            f.remove("/root/t")
        with pytest.raises(ValidationError):  # the guest refuses to remove /
            f.remove("/", recursive=True)
        assert box.exec("ls /bin/sh").ok

    def test_exec_streaming_calls_back_live(self, box):
        seen: list[tuple[float, str, str]] = []
        res = box.exec("for i in 1 2 3; do echo $i; sleep 0.4; done; echo oops >&2; exit 4",
                       on_stdout=lambda t: seen.append((time.monotonic(), "out", t)),
                       on_stderr=lambda t: seen.append((time.monotonic(), "err", t)))
        assert (res.exit_code, res.stdout, res.stderr) == (4, "1\n2\n3\n", "oops\n")
        assert "".join(t for _, k, t in seen if k == "out") == res.stdout
        assert seen[-1][0] - seen[0][0] > 0.5, "chunks arrived together: not streamed"

    def test_async_streaming_exec_and_files(self, vm, box):
        async def go():
            asb = await AsyncSandbox.connect(box.id, api_url=vm.api_url, api_key=vm.creds.api_key)
            got = []

            async def on_out(t):
                got.append(t)
            res = await asb.exec(["sh", "-c", "echo a; sleep 0.2; echo b"], on_stdout=on_out)
            await asb.files.write("/root/async.txt", b"A")
            data = await asb.files.read("/root/async.txt")
            pid = await asb.processes.start(["sleep", "60"], tag="async")
            assert "async" in [p.tag for p in await asb.processes.list()]
            assert await asb.processes.kill(pid) is True
            ran = await asb.processes.run("echo $((2+3))", on_stdout=on_out)
            assert ran.exit_code == 0 and ran.stdout == "5\n"
            await asb.close()
            return res, "".join(got), data
        res, streamed, data = asyncio.run(go())
        assert res.stdout == "a\nb\n" and streamed == "a\nb\n5\n" and data == b"A"

    def test_processes_background_stdin_signal_pty(self, vm, box):
        procs = box.processes
        pid = procs.start("echo up; sleep 600", tag="sleeper", env={"K": "v"})
        listed = {p.pid: p for p in procs.list()}
        assert listed[pid].tag == "sleeper" and listed[pid].env == {"K": "v"}
        out = []
        follower = threading.Thread(target=lambda: out.append(procs.wait(pid)))
        follower.start()
        time.sleep(1)
        procs.signal(pid, "SIGTERM")
        follower.join(30)
        assert out and out[0].exit_code == -15 and not out[0].ok
        assert procs.kill(pid) is False and pid not in {p.pid for p in procs.list()}

        def feed(p):
            procs.send_input(p, "one\n")
            procs.close_stdin(p)
        res = procs.run(["sh", "-c", "read l; echo got:$l; cat"], stdin=True, on_start=feed)
        assert (res.exit_code, res.stdout) == (0, "got:one\n") and res.pid

        screen = []

        def typed(p):
            procs.send_input(p, "stty size; exit 4\n")
        res = procs.run(["bash", "--norc", "-i"], pty=(90, 20), on_start=typed,
                        on_pty=screen.append)
        assert res.exit_code == 4 and b"20 90" in b"".join(screen)
        with pytest.raises(ArgumentError):
            procs.signal(pid, "SIGWHATEVER")
        with pytest.raises(ArgumentError):
            procs.start("x", pty=(0, 10))
        with pytest.raises(NotFoundError):
            procs.send_input(999999, "x")
        headers = {"Authorization": f"Bearer {vm.creds.api_key}"}
        import httpx
        r = httpx.post(f"{vm.api_url}/v1/sandboxes/{box.id}/processes", headers=headers,
                       json={"cmd": ["sleep", "1"], "pty": {"cols": 0, "rows": 5}})
        assert r.status_code == 422 and r.json()["op_id"]
        r = httpx.post(f"{vm.api_url}/v1/sandboxes/{box.id}/processes/1/input", headers=headers,
                       content=b"x" * ((1 << 20) + 1))
        assert r.status_code == 413, r.text

    def test_cli_process_and_shell(self, vm, box, tmp_path):
        r = corral(vm, "process", "start", box.id, "--tag", "cli", "--", "sleep", "300",
                   cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        r = corral(vm, "process", "list", box.id, "--json", cwd=tmp_path)
        assert [p["tag"] for p in json.loads(r.stdout) if p["pid"] == pid] == ["cli"]
        follow = subprocess.Popen([sys.executable, "-m", "corral", "process", "attach", box.id,
                                   str(pid)], env=cli_env(vm), cwd=tmp_path)
        time.sleep(2)
        assert corral(vm, "process", "kill", box.id, str(pid), cwd=tmp_path).returncode == 0
        assert follow.wait(60) == 128 + 9
        r = corral(vm, "process", "kill", box.id, str(pid), cwd=tmp_path)
        assert r.returncode == 1 and "not running" in r.stderr.decode()
        r = corral(vm, "shell", box.id, "--user", "user", cwd=tmp_path,
                   input=b"echo hi-$((40+2)) $(id -un); exit 3\n")
        assert r.returncode == 3 and b"hi-42 user" in r.stdout, (r.stdout, r.stderr)

    def test_port_urls_reach_http_and_websocket_servers_only_with_their_token(self, vm, box):
        import httpx
        from websockets.exceptions import InvalidHandshake
        from websockets.sync.client import connect as ws_connect
        box.files.write("/root/www/index.html", "<h1>from the sandbox</h1>")
        box.files.write("/root/ws_echo.py", WS_ECHO)
        web = box.processes.start(["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1",
                                   "--directory", "/root/www"])
        echo = box.processes.start(["python3", "/root/ws_echo.py"])
        url = box.port_url(8000)
        assert url.startswith(vm.api_url + f"/ports/{box.id}/8000/")
        for _ in range(100):  # until it listens
            r = httpx.get(url + "index.html", timeout=30)
            if r.status_code != 502:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.text == "<h1>from the sandbox</h1>", r.text
        assert r.headers["x-op-id"] and "text/html" in r.headers["content-type"]
        assert httpx.get(url + "nope", timeout=30).status_code == 404  # the server's own 404
        assert httpx.post(url, content=b"x", timeout=30).status_code == 501  # it has no POST
        token = url.rstrip("/").rsplit("/", 1)[1]
        bad = url.replace(token, token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"))
        r = httpx.get(bad + "index.html", timeout=30)
        assert r.status_code == 404 and r.json()["op_id"]
        other = url.replace("/8000/", "/8001/")  # the token opens its own port only
        assert httpx.get(other, timeout=30).status_code == 404
        r = httpx.get(box.port_url(8001), timeout=30)  # exposed, but nothing listens
        assert r.status_code == 502 and "port 8001" in r.json()["detail"]
        echo_headers = box.processes.start(["python3", "-c", HEADER_ECHO])
        hurl = box.port_url(8002)
        for _ in range(100):
            r = httpx.get(hurl + "h", timeout=30, headers={
                "Authorization": f"Bearer {vm.creds.api_key}", "X-API-KEY": "crl_e2b",
                "X-Access-Token": "tok", "X-Mine": "kept"})
            if r.status_code != 502:
                break
            time.sleep(0.2)
        seen = {k.lower(): v for k, v in r.json().items()}
        assert seen["x-mine"] == "kept" and seen["host"] == "127.0.0.1:8002"
        assert not {"authorization", "x-api-key", "x-access-token"} & seen.keys(), seen
        assert vm.creds.api_key not in r.text  # the guest never sees a Corral credential
        box.processes.kill(echo_headers)
        ws_url = box.port_url(8765).replace("http://", "ws://") + "chat?x=1"
        for _ in range(100):
            try:
                w = ws_connect(ws_url, open_timeout=30)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        else:
            raise AssertionError("the WebSocket server never answered")
        with w:
            w.send("hi")
            assert w.recv(timeout=30) == "echo:hi /chat?x=1"
            w.send(b"\x00\x01" * 40000)
            assert w.recv(timeout=30) == b"echo:" + b"\x00\x01" * 40000
        with pytest.raises(InvalidHandshake):
            ws_connect(ws_url.replace("/8765/", "/8000/"), open_timeout=30)
        box.processes.kill(web)
        box.processes.kill(echo)

    def test_pty_over_a_websocket(self, vm, box):
        from websockets.exceptions import InvalidHandshake
        from websockets.sync.client import connect as ws_connect
        url = vm.api_url.replace("http://", "ws://") + f"/v1/sandboxes/{box.id}/pty"
        auth = {"Authorization": f"Bearer {vm.creds.api_key}"}

        def until(w, needle: bytes, seen: bytearray) -> None:
            while needle not in seen:
                msg = w.recv(timeout=30)
                if isinstance(msg, bytes):
                    seen += msg

        with ws_connect(url + "?cols=70&rows=21&user=user", additional_headers=auth) as w:
            pid = json.loads(w.recv(timeout=30))["pid"]
            assert pid in {p.pid for p in box.processes.list()}
            seen = bytearray()
            w.send(b"stty size; id -un\n")
            until(w, b"21 70\r\nuser", seen)
            w.send(json.dumps({"resize": {"cols": 101, "rows": 33}}))
            w.send(json.dumps({"resize": {"cols": 0, "rows": 33}}))  # refused, session goes on
            msg = w.recv(timeout=30)
            while isinstance(msg, bytes):  # the terminal may speak first
                seen += msg
                msg = w.recv(timeout=30)
            assert "cols" in json.loads(msg)["error"]
            w.send(b"stty size\n")
            until(w, b"33 101", seen)
        # leaving detached it; it runs on, and a new socket attaches to it
        with ws_connect(url.replace("/pty", f"/processes/{pid}/pty"), additional_headers=auth) as w:
            assert json.loads(w.recv(timeout=30)) == {"pid": pid}
            w.send(b"exit 6\n")
            while True:
                msg = w.recv(timeout=30)
                if isinstance(msg, str) and "exit_code" in msg:
                    assert json.loads(msg)["exit_code"] == 6
                    break
        with pytest.raises(InvalidHandshake):  # no key, no terminal
            ws_connect(url, open_timeout=30)

    def test_files_watch_streams_changes(self, box):
        box.files.make_dir("/root/sdkw")
        got: list = []

        def on_event(e):
            got.append(e)
            return e != {"name": "d/m", "op": "create"}  # False: stop there
        follower = threading.Thread(target=lambda: box.files.watch(
            "/root/sdkw", on_event, recursive=True, timeout=120))
        follower.start()
        for i in range(100):  # until the watch sees something
            box.exec(f"touch /root/sdkw/ping{i}")
            if got:
                break
            time.sleep(0.2)
        box.exec("mkdir /root/sdkw/d && sleep 0.3 && touch /root/sdkw/d/m")
        follower.join(60)
        assert not follower.is_alive() and got[-1] == {"name": "d/m", "op": "create"}
        assert {"name": "d", "op": "create"} in got
        with pytest.raises(NotFoundError):
            box.files.watch("/root/no-such-dir", timeout=5)

    def test_large_files_stream_both_ways(self, box):
        import hashlib
        blob = os.urandom((20 << 20) + 12345)  # five pieces, the last a short one
        box.files.write("/root/big/blob.bin", blob)
        assert [f.name for f in box.files.list("/root/big")] == ["blob.bin"]  # no leftovers
        r = box.exec("sha256sum /root/big/blob.bin")
        assert r.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
        assert box.files.read("/root/big/blob.bin") == blob
        out = box.files.write_many({"/root/many/a.txt": "A", "/root/many/sub/b.bin": b"\x00B",
                                    '/root/many/q "x".txt': "Q"})
        assert [(o["path"], o["size"]) for o in out] == [
            ("/root/many/a.txt", 1), ("/root/many/sub/b.bin", 2), ('/root/many/q "x".txt', 1)]
        assert box.files.read("/root/many/sub/b.bin") == b"\x00B"
        assert box.files.read('/root/many/q "x".txt') == b"Q"
        import httpx
        r = httpx.post(f"{box._http.client.base_url}/v1/sandboxes/{box.id}/files",
                       headers={"Authorization": box._http.client.headers["authorization"]},
                       files={"f": ("relative.txt", b"x")})
        assert r.status_code == 422 and "absolute" in r.json()["detail"]
        box.files.write("/root/big/blob.bin", b"small now")  # replaced, atomically
        assert box.files.read("/root/big/blob.bin") == b"small now"
        with pytest.raises(ConflictError):  # its parent is a file: refused, nothing left over
            box.files.write("/root/big/blob.bin/x", blob)
        assert [f.name for f in box.files.list("/root/big")] == ["blob.bin"]

    def test_files_write_read_list(self, box):
        blob = os.urandom(300_000)
        box.files.write("/root/sdk/blob.bin", blob)
        box.files.write("/root/sdk/hello.txt", "héllo")
        assert box.files.read("/root/sdk/blob.bin") == blob
        assert box.files.read("/root/sdk/hello.txt").decode() == "héllo"
        listing = {f.name: f for f in box.files.list("/root/sdk")}
        assert listing["blob.bin"].size == len(blob) and not listing["blob.bin"].is_dir
        assert listing["hello.txt"].path == "/root/sdk/hello.txt"
        with pytest.raises(NotFoundError):
            box.files.read("/root/sdk/absent")

    def test_cli_exec_passes_the_exit_code_and_streams(self, vm, box, tmp_path):
        r = corral(vm, "sandbox", "exec", box.id, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                   cwd=tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
        r = corral(vm, "sandbox", "exec", "sdk-vm", "-i", "--", "cat", cwd=tmp_path, input=b"piped")
        assert (r.returncode, r.stdout) == (0, b"piped")

    def test_cli_cp_both_directions(self, vm, box, tmp_path):
        src = tmp_path / "up.bin"
        src.write_bytes(os.urandom(100_000))
        assert corral(vm, "sandbox", "cp", str(src), f"{box.id}:/root/cp/", cwd=tmp_path).returncode == 0
        assert box.files.read("/root/cp/up.bin") == src.read_bytes()
        r = corral(vm, "sandbox", "cp", f"{box.id}:/root/cp/up.bin", str(tmp_path / "down.bin"),
                   cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "down.bin").read_bytes() == src.read_bytes()
        r = corral(vm, "sandbox", "cp", f"{box.id}:/root/cp/up.bin", "-", cwd=tmp_path)
        assert r.stdout == src.read_bytes()

    def test_events_tail_json_sees_the_create(self, vm, box, tmp_path):
        p = subprocess.Popen([sys.executable, "-m", "corral", "events", "tail", "--json",
                              "--since", "30m", "--sandbox", box.id], env=cli_env(vm), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # a shell's background job ignores SIGINT, and so would the CLI
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        lines: list[dict] = []

        def read():
            for ln in p.stdout:
                lines.append(json.loads(ln))
        t = threading.Thread(target=read, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "SandboxStarted" not in {e["type"] for e in lines}:
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
        t.join(5)
        types = [e["type"] for e in lines]
        assert types[:4] == ["SandboxRequested", "SandboxScheduled", "SandboxStarting", "SandboxStarted"]
        assert {e["sandbox_id"] for e in lines} == {box.id} and all(e["op_id"] for e in lines)
        assert p.returncode == 130 and "Traceback" not in err

    def test_context_manager_kills_the_vm(self, vm, box):
        with pytest.raises(KeyError):
            with Sandbox.connect(box.id, api_url=vm.api_url, api_key=vm.creds.api_key):
                raise KeyError("body")
        # only observe: the exit of the block must have asked for the destruction
        deadline = time.monotonic() + 120
        while box.refresh().state != "destroyed":
            assert box.state == "stopping" and time.monotonic() < deadline, box.state
            time.sleep(0.2)
