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
    from .background import Background, Backgrounds
    from .console import log
    from .entropy import add_entropy
    from .execs import Execs
    from .netconf import set_net
else:  # inside the guest: the modules sit side by side
    import files
    import process
    import protocol as P
    from background import Background, Backgrounds
    from console import log
    from entropy import add_entropy
    from execs import Execs
    from netconf import set_net

AGENT = "corral-guest/1"
OPS = ["hello", "ping", "configure", "exec", "cancel", "put", "get", "list", "fs",
       "spawn", "attach", "detach", "input", "signal", "resize", "ps", "connect",
       "watch", "poll", "close"]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
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


class Agent(Backgrounds, Execs):  # Backgrounds first: its `reaped`
    def __init__(self, port_path: str) -> None:
        self.fd = os.open(port_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel = selectors.DefaultSelector()
        self.dec = P.Decoder()
        self.out = bytearray()
        self.procs: dict[int, process.Proc] = {}  # by pid
        self.by_rid: dict[int, process.Proc] = {}
        self.background: dict[int, Background] = {}  # by pid
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.env = dict(BASE_ENV)
        self.defaults: dict[str, str] = {}  # the image's cwd and user for execs
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
        """PID 1's loop: nothing a peer sends may end it (the kernel would panic)."""
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, mask in self.sel.select(timeout):
                self.guarded(functools.partial(key.data, key.fileobj, mask))
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                self.guarded(fn)

    @staticmethod
    def guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - logged; the agent must live on
            log(f"internal error: {e.__class__.__name__}: {e}")

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
        self.feed(data)

    def feed(self, data: bytes) -> None:
        try:
            frames = self.dec.feed(data)
        except P.ProtocolError as e:
            log(f"protocol error, resetting: {e}")
            self.dec.reset()
            return
        for reason in self.dec.skipped:
            log(f"frame skipped: {reason}")
        self.dec.skipped.clear()
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
            self.detach_all()  # background processes run on
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
            self.feed(data)

    def send(self, header: dict, payload: bytes = b"") -> None:
        if not self.connected:
            return
        try:
            frame = P.encode(header, payload)
        except (P.ProtocolError, TypeError, ValueError) as e:  # never an unanswered request
            frame = P.encode({"id": header.get("id"), "type": "error", "code": "EIO",
                              "message": f"reply not encodable: {e}"[:500]})
        self.out += frame
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
            self.error(rid, e.code, e.message)
        except OSError as e:
            self.error(rid, P.errno_code(e), str(e))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            self.error(rid, "EINVAL", str(e))
        except Exception as e:  # noqa: BLE001 - every request is answered
            self.error(rid, "EIO", f"{e.__class__.__name__}: {e}")

    def error(self, rid: int, code: str, message: str) -> None:
        self.send({"id": rid, "type": "error", "code": code, "message": message[:1000]})

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
        for k in ("cwd", "user"):
            if h.get(k) is not None:
                if not isinstance(h[k], str) or not h[k] or len(h[k]) > P.MAX_PATH:
                    raise P.GuestError("EINVAL", f"{k} must be a non-empty string")
                self.defaults[k] = h[k]
        if h.get("hostname"):  # /etc/hostname links to the kernel's (see the image)
            socket.sethostname(str(h["hostname"]))
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

    # -- files --------------------------------------------------------------
    def op_put(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        self.send(files.put(rid, h, payload))

    def op_get(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        self.send(*files.get(rid, h))

    def op_list(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        self.send(*files.listing(rid, h))

    def op_fs(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        self.send(files.fs(rid, h))


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
