"""Background processes of the guest agent: `spawn`, `attach`, `detach`,
`input`, `signal`, `resize`, `ps` (a mixin of Agent: it uses its loop,
selector and `send`).

Unlike an `exec`, a background process is not bound to the request that
started it: it runs with pipes or a PTY until it exits, is killed or its
timeout ends; the host's connection may come and go. Its output goes to
every request attached to it (none: read and dropped, so it never blocks);
stdin is queued (at most MAX_INPUT bytes waiting)."""
from __future__ import annotations

import fcntl
import functools
import itertools
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import process
    from . import protocol as P
else:  # inside the guest: the modules sit side by side
    import process
    import protocol as P

MAX_PROCS = 128
MAX_SUBS = 16  # requests attached to one process
MAX_INPUT = 1 << 20
DRAIN_GRACE_S = 0.2
SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10,
           "SIGUSR2": 12, "SIGTERM": 15, "SIGCONT": 18, "SIGSTOP": 19}


class Background:
    """One process: its output fds (fd -> stream), stdin fd and queue, attached ids."""

    def __init__(self, popen: subprocess.Popen | None, h: dict, argv: list[str], cwd: str,
                 master: int | None, pid: int = 0) -> None:
        self.popen, self.argv, self.cwd = popen, argv, cwd
        self.pid = popen.pid if popen is not None else pid
        self.tag = str(h.get("tag") or "")[:256] or None
        self.env = dict(h.get("env") or {})
        self.master = master
        self.out: dict[int, str] = {}
        self.files: dict[int, Any] = {}  # fds a Popen pipe object owns
        self.stdin_fd: int | None = None
        self.inbuf = bytearray()
        self.eof = False
        self.subs: set[int] = set()
        self.status: int | None = None
        self.timed_out = False
        self.started = time.monotonic()
        self.ends_unattended = False  # ended when its last attached request leaves

    def render(self, data: bytes) -> bytes:
        return data  # what its output fds give, as it goes out

    @property
    def gone(self) -> bool:
        return False

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "argv": self.argv, "cwd": self.cwd, "tag": self.tag,
                "env": self.env, "pty": self.master is not None,
                "stdin": self.stdin_fd is not None}


CONN_IDS = itertools.count(1 << 23)  # above every pid (pid_max is at most 2**22)


class Conn(Background):
    """A TCP connection to a port inside the guest (127.0.0.1 only), handled
    as a process whose stdout is what it receives and stdin what it sends;
    `eof` half-closes it. It ends when the peer closes."""

    def __init__(self, sock: socket.socket, h: dict, port: int) -> None:
        super().__init__(None, h, [f"tcp:{port}"], "/", None, next(CONN_IDS))
        self.sock = sock
        self.status = 0  # never reaped: it ends with its output
        self.ends_unattended = True
        fd = sock.fileno()
        self.out = {fd: "stdout"}
        self.files = {fd: sock}
        self.stdin_fd = os.dup(fd)


def connect(h: dict) -> Conn:
    port = h.get("port")
    if type(port) is not int or not 1 <= port <= 65535:
        raise P.GuestError("EINVAL", "port must be 1..65535")
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)  # loopback: instant
    sock.setblocking(False)
    return Conn(sock, h, port)


def _winsize(fd: int, size: Any) -> None:
    if not isinstance(size, dict):
        raise P.GuestError("EINVAL", "pty must be {cols, rows}")
    cols, rows = size.get("cols"), size.get("rows")
    if not all(type(v) is int and 1 <= v <= 4096 for v in (cols, rows)):
        raise P.GuestError("EINVAL", "pty cols and rows must be 1..4096")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _close(bg: Background, fd: int) -> None:
    f = bg.files.pop(fd, None)
    try:
        f.close() if f is not None else os.close(fd)
    except OSError:
        pass


def _take_tty() -> None:  # in the child, after setsid: the PTY becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def start(h: dict, base_env: dict[str, str], defaults: dict) -> Background:
    argv, env, cwd, ids = process.prepare(h, base_env, defaults)
    pty = h.get("pty")
    if pty is None:
        stdin = subprocess.PIPE if h.get("stdin") else subprocess.DEVNULL
        popen = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=cwd, env=env,
                                 start_new_session=True, close_fds=True, **ids)
        bg = Background(popen, h, argv, cwd, None)
        assert popen.stdout is not None and popen.stderr is not None
        bg.out = {popen.stdout.fileno(): "stdout", popen.stderr.fileno(): "stderr"}
        bg.files = {f.fileno(): f for f in (popen.stdout, popen.stderr, popen.stdin) if f}
        bg.stdin_fd = popen.stdin.fileno() if popen.stdin is not None else None
        return bg
    master, slave = os.openpty()  # both close-on-exec
    try:
        _winsize(master, pty)
        if (h.get("env") or {}).get("TERM") is None:
            env["TERM"] = "xterm-256color"
        popen = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                 env=env, start_new_session=True, close_fds=True,
                                 preexec_fn=_take_tty, **ids)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    bg = Background(popen, h, argv, cwd, master)
    bg.out = {master: "pty"}
    bg.stdin_fd = os.dup(master)  # a second fd: the selector watches each one way
    return bg


class Backgrounds:
    sel: selectors.BaseSelector
    env: dict[str, str]
    defaults: dict[str, str]
    background: dict[int, Background]  # by pid

    def send(self, header: dict, payload: bytes = b"") -> None: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...

    def _find(self, h: dict) -> Background:
        pid = h.get("pid")
        bg = self.background.get(pid) if isinstance(pid, int) else None
        if bg is None:
            raise P.GuestError("ENOENT", f"no process {h.get('pid')!r} is running")
        return bg

    def op_spawn(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        """`attach` (default true): this request streams `started`, output and
        `exit`; else it is answered `ok` with the pid at once."""
        self._run(rid, h, payload, lambda: start(h, self.env, self.defaults))

    def op_connect(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        """A connection to `port` on the guest's loopback, streamed like a spawn."""
        self._run(rid, {**h, "attach": True}, payload, lambda: connect(h))

    def _run(self, rid: int, h: dict[str, Any], payload: bytes,
             make: Callable[[], Background]) -> None:
        if len(self.background) >= MAX_PROCS:
            raise P.GuestError("EAGAIN", f"{MAX_PROCS} processes and connections run already")
        timeout = h.get("timeout_s")
        if timeout is not None and not (isinstance(timeout, int | float) and
                                        0 < timeout <= 86400 * 30):
            raise P.GuestError("EINVAL", "timeout_s out of range")
        bg = make()
        self.background[bg.pid] = bg
        for fd, stream in bg.out.items():
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ,
                              lambda f, m, b=bg, s=stream: self._on_output(b, s, f))
        if bg.stdin_fd is not None:
            os.set_blocking(bg.stdin_fd, False)
        if timeout:
            self.call_later(float(timeout), functools.partial(self._expire, bg))
        if h.get("attach", True):
            self.op_attach(rid, {"pid": bg.pid}, b"")
        else:
            self.send({"id": rid, "type": "ok", "pid": bg.pid})
        if payload:
            self._queue_input(bg, payload, False)

    def op_attach(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        bg = self._find(h)
        if len(bg.subs) >= MAX_SUBS:
            raise P.GuestError("EBUSY", f"{MAX_SUBS} requests are attached already")
        bg.subs.add(rid)
        self.send({"id": rid, "type": "started", "pid": bg.pid})

    def op_detach(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        """Ends the attached request `target` (the process runs on)."""
        target = h.get("target")
        found = False
        for bg in list(self.background.values()):
            if target in bg.subs:
                bg.subs.discard(target)
                found = True
                if bg.ends_unattended and not bg.subs:  # nobody left to read it
                    self._end(bg)
        self.send({"id": rid, "type": "ok", "found": found})

    def detach_all(self) -> None:
        for bg in list(self.background.values()):
            bg.subs.clear()
            if bg.ends_unattended:
                self._end(bg)

    def op_input(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        self._queue_input(self._find(h), payload, bool(h.get("eof")))
        self.send({"id": rid, "type": "ok"})

    def op_signal(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        bg = self._find(h)
        sig = SIGNALS.get(h.get("signal"))  # type: ignore[arg-type]
        if bg.popen is None:
            raise P.GuestError("EINVAL", "only a process takes signals (this one: close)")
        if sig is None:
            raise P.GuestError("EINVAL", f"signal must be one of {sorted(SIGNALS)}")
        os.killpg(bg.pid, sig)
        self.send({"id": rid, "type": "ok"})

    def op_watch(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        """Events under a directory: streamed to this request (`attach`, the
        default; it ends when nobody is attached), or kept for `poll`."""
        if TYPE_CHECKING or __package__:
            from .watch import Watch
        else:
            from watch import Watch
        self._run(rid, h, b"", lambda: Watch(h))

    def op_poll(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        bg = self._find(h)
        take = getattr(bg, "take", None)
        if take is None:
            raise P.GuestError("EINVAL", "not a watch")
        events, overflowed = take()
        self.send({"id": rid, "type": "ok", "count": len(events), "overflowed": overflowed},
                  json.dumps(events, ensure_ascii=False).encode("utf-8", "surrogateescape"))

    def op_close(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        """Ends a watch or a connection (a process: `signal`)."""
        bg = self._find(h)
        if bg.popen is not None:
            raise P.GuestError("EINVAL", "a process ends by a signal")
        self._end(bg)
        self.send({"id": rid, "type": "ok"})

    def op_resize(self, rid: int, h: dict[str, Any], _p: bytes) -> None:
        bg = self._find(h)
        if bg.master is None or bg.master not in bg.out:
            raise P.GuestError("EINVAL", "the process has no PTY")
        _winsize(bg.master, h.get("pty"))  # the kernel sends SIGWINCH
        self.send({"id": rid, "type": "ok"})

    def op_ps(self, rid: int, _h: dict[str, Any], _p: bytes) -> None:
        self.send({"id": rid, "type": "ok",
                   "procs": [b.info() for b in self.background.values() if b.status is None]})

    # -- I/O ------------------------------------------------------------------------
    def _queue_input(self, bg: Background, data: bytes, eof: bool) -> None:
        if bg.stdin_fd is None or bg.eof:
            raise P.GuestError("EPIPE", "the process's stdin is closed (start it with stdin)")
        if len(bg.inbuf) + len(data) > MAX_INPUT:
            raise P.GuestError("EAGAIN", "the process is not reading its input")
        idle = not bg.inbuf
        bg.inbuf += data
        bg.eof = eof
        if idle:
            self.sel.register(bg.stdin_fd, selectors.EVENT_WRITE,
                              lambda f, m, b=bg: self._on_stdin(b))

    def _on_stdin(self, bg: Background) -> None:
        fd = bg.stdin_fd
        if fd is None:
            return
        try:
            n = os.write(fd, bg.inbuf[:1 << 16])
            del bg.inbuf[:n]
            if bg.inbuf:
                return
        except BlockingIOError:
            return
        except OSError:
            bg.inbuf.clear()  # EPIPE: nobody reads it
        self.sel.unregister(fd)
        if bg.eof:
            self._close_stdin(bg)

    def _close_stdin(self, bg: Background) -> None:
        if bg.stdin_fd is not None:
            if bg.inbuf:
                self.sel.unregister(bg.stdin_fd)
            if isinstance(bg, Conn) and bg.out:
                try:
                    bg.sock.shutdown(socket.SHUT_WR)  # FIN: the dup alone would not send it
                except OSError:
                    pass
            _close(bg, bg.stdin_fd)
            bg.stdin_fd = None
            bg.inbuf.clear()

    def _on_output(self, bg: Background, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, P.CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: a PTY whose last slave closed
        if not data:
            self._close_output(bg, fd)
            self._maybe_end(bg)
            return
        data = bg.render(data)
        for rid in bg.subs if data else ():
            self.send({"id": rid, "type": "out", "stream": stream}, data)
        if bg.gone:
            self._end(bg)

    def _close_output(self, bg: Background, fd: int) -> None:
        if bg.out.pop(fd, None) is not None:
            self.sel.unregister(fd)
            _close(bg, fd)

    def _expire(self, bg: Background) -> None:
        if isinstance(bg, Conn) and self.background.get(bg.pid) is bg:
            self._end(bg)
        elif bg.status is None and self.background.get(bg.pid) is bg:
            bg.timed_out = True
            try:
                os.killpg(bg.pid, signal.SIGKILL)
            except OSError:
                pass

    def reaped(self, pid: int, code: int) -> None:
        bg = self.background.get(pid)
        if bg is None:
            return  # a reparented orphan
        bg.status = code
        if bg.popen is not None:
            bg.popen.returncode = code
        if bg.out:
            self.call_later(DRAIN_GRACE_S, lambda: self._end(bg))
        self._maybe_end(bg)

    def _maybe_end(self, bg: Background) -> None:
        if bg.status is not None and not bg.out:
            self._end(bg)

    def _end(self, bg: Background) -> None:
        if self.background.pop(bg.pid, None) is None:
            return
        for fd in list(bg.out):
            self._close_output(bg, fd)
        self._close_stdin(bg)
        end = {"type": "exit", "code": bg.status, "timed_out": bg.timed_out,
               "truncated": False, "duration_ms": int((time.monotonic() - bg.started) * 1000)}
        for rid in bg.subs:
            self.send({"id": rid, **end})
        bg.subs.clear()
