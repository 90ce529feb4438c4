"""The exec side of the guest agent: processes, their output, stdin, timeouts,
exit and cancel (a mixin of Agent: it uses its loop, selector and `send`)."""
from __future__ import annotations

import functools
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import process
    from . import protocol as P
else:  # inside the guest: the modules sit side by side
    import process
    import protocol as P

DRAIN_GRACE_S = 0.2


class Execs:
    sel: selectors.BaseSelector
    procs: dict[int, process.Proc]
    by_rid: dict[int, process.Proc]
    env: dict[str, str]
    defaults: dict[str, str]

    def send(self, header: dict, payload: bytes = b"") -> None: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...
    def reaped(self, pid: int, code: int) -> None: ...  # not an exec's: background's

    def op_exec(self, rid: int, h: dict[str, Any], payload: bytes) -> None:
        try:
            proc = process.spawn(rid, h, self.env, self.defaults)
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
                self.reaped(pid, os.waitstatus_to_exitcode(status))
                continue
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
