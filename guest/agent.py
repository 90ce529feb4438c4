"""Corral guest agent: PID 1 inside the VM, serves the host over virtio-serial.

Stdlib only and asyncio-free (selectors) to keep start-up short under TCG.
Run as `python3 -S -E /opt/corral/guest/agent.py`.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import files, process
    from . import protocol as P
    from .console import log
    from .entropy import add_entropy
    from .netconf import set_net
else:  # inside the guest: the modules sit side by side
    import files
    import process
    import protocol as P
    from console import log
    from entropy import add_entropy
    from netconf import set_net

AGENT = "corral-guest/1"
OPS = ["hello", "ping", "configure", "exec", "cancel", "put", "get", "list"]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
DRAIN_GRACE_S = 0.2
RECONNECT_POLL_S = 0.02


def find_port(name: str = P.PORT_NAME) -> str | None:
    base = "/sys/class/virtio-ports"
    try:
        ports = os.listdir(base)
    except FileNotFoundError:
        return None
    for p in ports:
        try:
            with open(f"{base}/{p}/name") as f:
                if f.read().strip() == name:
                    return f"/dev/{p}"
        except OSError:
            continue
    return None


class Agent:
    def __init__(self, port_path: str) -> None:
        self.fd = os.open(port_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel = selectors.DefaultSelector()
        self.dec = P.Decoder()
        self.out = bytearray()
        self.procs: dict[int, process.Proc] = {}  # by pid
        self.by_rid: dict[int, process.Proc] = {}
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.env = dict(BASE_ENV)
        self.connected = True
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sig_r = rfd
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.sig_r, selectors.EVENT_READ, self.on_signal)
        self.sel.register(self.fd, selectors.EVENT_READ, self.on_port)
        # Opened once: a restored clone's hand-off then runs no open() path.
        self.urandom = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        self.inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    # -- loop ---------------------------------------------------------------
    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.seq), fn))

    def run(self) -> None:
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, mask in self.sel.select(timeout):
                key.data(key.fileobj, mask)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                fn()

    # -- port I/O -----------------------------------------------------------
    def on_port(self, _fd: int, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self.read_port()
        if mask & selectors.EVENT_WRITE and self.connected:
            self.flush()

    def read_port(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            log(f"port read: {e}")
            data = b""
        if not data:
            self.on_disconnect()
            return
        try:
            frames = self.dec.feed(data)
        except P.ProtocolError as e:
            log(f"protocol error, resetting: {e}")
            self.dec.reset()
            return
        for header, payload in frames:
            self.dispatch(header, payload)

    def on_disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.dec.reset()
            self.out.clear()
            for proc in list(self.by_rid.values()):
                self.kill(proc)
                proc.finished = True  # nobody to answer
        self.sel.unregister(self.fd)
        self.call_later(RECONNECT_POLL_S, self.poll_reconnect)

    def poll_reconnect(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            data = None  # connected, nothing yet
        except OSError:
            data = b""
        if data == b"":
            self.call_later(RECONNECT_POLL_S, self.poll_reconnect)
            return
        self.connected = True
        self.sel.register(self.fd, selectors.EVENT_READ, self.on_port)
        if data:
            try:
                frames = self.dec.feed(data)
            except P.ProtocolError:
                self.dec.reset()
                return
            for header, payload in frames:
                self.dispatch(header, payload)

    def send(self, header: dict, payload: bytes = b"") -> None:
        if not self.connected:
            return
        self.out += P.encode(header, payload)
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.fd, self.out[:1 << 20])
            except BlockingIOError:
                break
            except OSError as e:
                log(f"port write: {e}")
                self.out.clear()
                break
            del self.out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.connected:
            self.sel.modify(self.fd, want, self.on_port)

    # -- dispatch -----------------------------------------------------------
    def dispatch(self, h: dict[str, Any], payload: bytes) -> None:
        rid = h.get("id")
        op = h.get("op")
        if not isinstance(rid, int):
            log("request without id dropped")
            return
        fn = getattr(self, f"op_{op}", None) if op in OPS else None
        if fn is None:
            self.send({"id": rid, "type": "error", "code": "EBADOP",
                       "message": f"unknown op {op!r}"})
            return
        try:
            fn(rid, h, payload)
        except P.GuestError as e:
            self.send({"id": rid, "type": "error", "code": e.code, "message": e.message})
        except OSError as e:
            self.send({"id": rid, "type": "error", "code": P.errno_code(e), "message": str(e)})
        except (TypeError, ValueError, KeyError) as e:
            self.send({"id": rid, "type": "error", "code": "EINVAL", "message": str(e)})

    def op_hello(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        uptime = time.clock_gettime(time.CLOCK_BOOTTIME)  # = /proc/uptime, via the vDSO
        self.send({"id": rid, "type": "hello", "v": P.VERSION, "agent": AGENT, "ops": OPS,
                   "uptime_ms": int(uptime * 1000), "pid": os.getpid()})

    def op_ping(self, rid: int, _h: dict[str, Any], _p: bytes) -> None:
        self.send({"id": rid, "type": "ok"})

    def op_configure(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        t0 = time.monotonic()
        ms = {}

        def mark(step: str) -> None:
            nonlocal t0
            t = time.monotonic()
            ms[step] = round((t - t0) * 1000, 1)
            t0 = t
        env = h.get("env")
        if env is not None:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise P.GuestError("EINVAL", "env must map str to str")
            self.env = {**BASE_ENV, **env}
        if h.get("hostname"):
            name = str(h["hostname"])
            socket.sethostname(name)
            fd = os.open("/etc/hostname", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o644)
            try:
                os.write(fd, (name + "\n").encode())
            finally:
                os.close(fd)
            mark("hostname")
        applied = []
        if payload:  # fresh entropy, e.g. after a snapshot restore
            applied.append("entropy:" + add_entropy(payload, bool(h.get("credit", True)),
                                                    self.urandom))
            mark("entropy")
        if h.get("time_ns") is not None:  # wall clock: a restored clone lives in the past
            time.clock_settime_ns(time.CLOCK_REALTIME, int(h["time_ns"]))
            applied.append("time")
            mark("time")
        if h.get("net") is not None:
            how = set_net(h["net"], self.inet)
            applied.append("net" if how == "ioctl" else f"net:{how}")
            mark("net")
        self.send({"id": rid, "type": "ok", "applied": applied, "ms": ms})

    # -- exec ---------------------------------------------------------------
    def op_exec(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        try:
            proc = process.spawn(rid, h, self.env)
        except process.SpawnFailed as e:
            self.send({"id": rid, "type": "out", "stream": "stderr"}, e.stderr)
            self.send({"id": rid, "type": "exit", "code": e.exit_code, "timed_out": False,
                       "truncated": False, "duration_ms": 0})
            return
        popen, timeout = proc.popen, proc.timeout
        self.procs[popen.pid] = proc
        self.by_rid[rid] = proc
        assert popen.stdout is not None and popen.stderr is not None
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self.sel.register(pipe.fileno(), selectors.EVENT_READ,
                              lambda fd, m, p=proc, s=name: self.on_output(p, s, fd))
        if popen.stdin is not None:
            proc.stdin_buf = payload
            os.set_blocking(popen.stdin.fileno(), False)
            self.sel.register(popen.stdin.fileno(), selectors.EVENT_WRITE,
                              lambda fd, m, p=proc: self.on_stdin(p))

        def on_timeout(p: process.Proc = proc) -> None:
            if p.status is None and not p.finished:
                p.timed_out = True
                self.kill(p)
        self.call_later(timeout, on_timeout)

    def on_stdin(self, proc: process.Proc) -> None:
        pipe = proc.popen.stdin
        assert pipe is not None
        try:
            n = os.write(pipe.fileno(), proc.stdin_buf[:1 << 16])
            proc.stdin_buf = proc.stdin_buf[n:]
            if proc.stdin_buf:
                return
        except BlockingIOError:
            return
        except OSError:
            pass  # EPIPE: the process does not read stdin
        self.sel.unregister(pipe.fileno())
        pipe.close()

    def on_output(self, proc: process.Proc, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, P.CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            getattr(proc.popen, stream).close()
            proc.open_streams -= 1
            self.maybe_finish(proc)
            return
        room = proc.cap - proc.sent[stream]
        if len(data) > room:
            proc.truncated = True
            data = data[:max(room, 0)]
        if data and not proc.finished:
            proc.sent[stream] += len(data)
            self.send({"id": proc.rid, "type": "out", "stream": stream}, data)

    def on_signal(self, fd: int, _mask: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            proc = self.procs.pop(pid, None)
            if proc is None:
                continue  # a reparented orphan
            proc.status = os.waitstatus_to_exitcode(status)
            proc.popen.returncode = proc.status
            if proc.open_streams:
                self.call_later(DRAIN_GRACE_S, functools.partial(self.force_finish, proc))
            self.maybe_finish(proc)

    def force_finish(self, proc: process.Proc) -> None:
        for stream in ("stdout", "stderr"):
            pipe = getattr(proc.popen, stream)
            if not pipe.closed:
                self.sel.unregister(pipe.fileno())
                pipe.close()
                proc.open_streams -= 1
        self.maybe_finish(proc)

    def maybe_finish(self, proc: process.Proc) -> None:
        if proc.status is None or proc.open_streams:
            return
        stdin = proc.popen.stdin
        if stdin is not None and not stdin.closed:
            self.sel.unregister(stdin.fileno())
            stdin.close()
        self.by_rid.pop(proc.rid, None)
        if proc.finished:
            return
        proc.finished = True
        self.send({"id": proc.rid, "type": "exit", "code": proc.status,
                   "timed_out": proc.timed_out, "truncated": proc.truncated,
                   "duration_ms": int((time.monotonic() - proc.started) * 1000)})

    def kill(self, proc: process.Proc) -> None:
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except OSError:
            pass

    def op_cancel(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        target = h.get("target")
        proc = self.by_rid.get(target) if isinstance(target, int) else None
        if proc is not None:
            self.kill(proc)
        self.send({"id": rid, "type": "ok", "found": proc is not None})

    # -- files --------------------------------------------------------------
    def op_put(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        self.send(files.put(rid, h, payload))

    def op_get(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        self.send(*files.get(rid, h))

    def op_list(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        self.send(files.listing(rid, h))


def main() -> None:
    deadline = time.monotonic() + 30
    port = find_port()
    while port is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the port appears once virtio_console probed it
        port = find_port()
    if port is None:
        log("virtio port corral.agent not found")
        sys.exit(1)
    log(f"ready on {port}")
    Agent(port).run()


if __name__ == "__main__":
    main()
