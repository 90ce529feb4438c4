"""`sb.processes`: background processes and PTYs inside a sandbox.

A process started here runs until it exits, is killed or its timeout ends;
leaving its output stream does not stop it. `run` starts one and follows it
to its end; `start` answers its pid at once, `wait` follows one by pid.
"""
from __future__ import annotations

import base64
import builtins
import codecs
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from . import _args as chk
from . import _http as h
from .errors import ArgumentError, NotFoundError, StreamError
from .sse import SSEDecoder

SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM",
           "SIGCONT", "SIGSTOP")


@dataclass
class ProcessInfo:
    pid: int
    cmd: list[str]
    cwd: str
    tag: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pty: bool = False
    stdin: bool = False


@dataclass
class ProcessExit:
    exit_code: int | None  # -N: killed by signal N
    timed_out: bool
    duration_ms: int
    pid: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class _Follower:
    """Folds a process stream's events: output to callbacks (stdout and stderr
    decoded as UTF-8, kept), the pid, and the exit."""

    def __init__(self, callbacks: dict[str, Any], keep: bool) -> None:
        self.cb, self.keep = callbacks, keep
        self.text = {s: codecs.getincrementaldecoder("utf-8")("replace")
                     for s in ("stdout", "stderr")}
        self.kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.pid: int | None = None
        self.exit: ProcessExit | None = None

    def on(self, ev: Any) -> h.Op:
        if ev.event not in ("start", "stdout", "stderr", "pty", "exit", "error"):
            return
        doc = h.event_doc(ev)
        if ev.event == "exit":
            self.exit = ProcessExit(doc.get("exit_code"), bool(doc.get("timed_out")),
                                    int(doc.get("duration_ms") or 0), self.pid,
                                    "".join(self.kept["stdout"]), "".join(self.kept["stderr"]))
            return
        if ev.event == "start":
            self.pid = doc.get("pid")
            out: Any = self.pid
        else:
            out = base64.b64decode(doc.get("data_b64") or "")
            if ev.event != "pty":
                out = self.text[ev.event].decode(out)
                if self.keep:
                    self.kept[ev.event].append(out)
        if self.cb.get(ev.event) and (out or ev.event == "start"):
            yield h.Emit(self.cb[ev.event], out)


def _follow(call: h.Call, callbacks: dict[str, Any], keep: bool) -> h.Op:
    resp = yield from h.request(call)
    dec, fold = SSEDecoder(), _Follower(callbacks, keep)
    while True:
        chunk = yield h.Read(resp)
        for ev in (dec.feed(chunk) if chunk else dec.close()):
            yield from fold.on(ev)
            if fold.exit is not None:
                return fold.exit
        if not chunk:
            raise StreamError("process stream ended without an exit event",
                              op_id=resp.headers.get("x-op-id"))


class Processes:
    def __init__(self, sandbox: Any):
        self._sb = sandbox

    def _path(self, *rest: Any) -> str:
        return "/".join([f"/v1/sandboxes/{self._sb.id}/processes", *map(str, rest)])

    def _body(self, cmd, env, cwd, user, tag, timeout, stdin, pty) -> dict[str, Any]:
        chk.check_argv("cmd", cmd)
        chk.check_map("env", env)
        chk.check_path("cwd", cwd, optional=True)
        chk.check_str("user", user, optional=True)
        chk.check_str("tag", tag, optional=True)
        chk.check_seconds("timeout", timeout, optional=True)
        body: dict[str, Any] = {"cmd": ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd),
                                "env": env or {}, "stdin": bool(stdin)}
        for k, v in (("cwd", cwd), ("user", user), ("tag", tag), ("timeout_s", timeout)):
            if v is not None:
                body[k] = v
        if pty is not None:
            if not (isinstance(pty, tuple) and len(pty) == 2):
                raise ArgumentError("pty must be (cols, rows)", param="pty")
            chk.check_int("pty", pty[0], 1, 4096)
            chk.check_int("pty", pty[1], 1, 4096)
            body["pty"] = {"cols": pty[0], "rows": pty[1]}
        return body

    def start(self, cmd: builtins.list[str] | str, env: dict[str, str] | None = None,
              cwd: str | None = None, user: str | None = None, tag: str | None = None,
              timeout: float | None = None, stdin: bool = False,
              pty: tuple | None = None):
        """Start it in the background and answer its pid (a str runs via `sh -c`;
        `pty=(cols, rows)` runs it on a terminal, stdin then open)."""
        body = self._body(cmd, env, cwd, user, tag, timeout, stdin, pty)
        call = h.Call("POST", self._path(), json=body)
        return self._sb._run(self._sb._then(h.request(call),
                                            lambda r: int(h.parse_json(r)["pid"])))

    def run(self, cmd: builtins.list[str] | str, env: dict[str, str] | None = None,
            cwd: str | None = None, user: str | None = None, tag: str | None = None,
            timeout: float | None = None, stdin: bool = False, pty: tuple | None = None,
            on_start: Callable[[int], Any] | None = None,
            on_stdout: Callable[[str], Any] | None = None,
            on_stderr: Callable[[str], Any] | None = None,
            on_pty: Callable[[bytes], Any] | None = None):
        """Start it and follow it to its end: `on_start(pid)` first (send it
        input then), output to the callbacks; answers a ProcessExit (with the
        output, decoded as UTF-8)."""
        body = self._body(cmd, env, cwd, user, tag, timeout, stdin, pty)
        call = h.Call("POST", self._path(), json=body, stream=True, timeout=60,
                      headers={"Accept": "text/event-stream"})
        return self._sb._run(_follow(call, {"start": on_start, "stdout": on_stdout,
                                            "stderr": on_stderr, "pty": on_pty}, True))

    def wait(self, pid: int, on_stdout: Callable[[str], Any] | None = None,
             on_stderr: Callable[[str], Any] | None = None,
             on_pty: Callable[[bytes], Any] | None = None, timeout: float = 3600):
        """Follow a running process from now on to its end (at most `timeout`)."""
        chk.check_int("pid", pid, 1)
        chk.check_seconds("timeout", timeout)
        call = h.Call("GET", self._path(pid, "stream"), params={"stream_s": timeout},
                      stream=True, timeout=60, headers={"Accept": "text/event-stream"})
        return self._sb._run(_follow(call, {"stdout": on_stdout, "stderr": on_stderr,
                                            "pty": on_pty}, True))

    def list(self):
        """The background processes that run now."""
        def parse(resp):
            return [ProcessInfo(**{k: p.get(k) for k in ("pid", "cmd", "cwd", "tag")},
                                env=p.get("env") or {}, pty=bool(p.get("pty")),
                                stdin=bool(p.get("stdin")))
                    for p in h.parse_json(resp).get("processes", [])]
        return self._sb._run(self._sb._then(h.request(h.Call("GET", self._path()),
                                                      self._sb._retry), parse))

    def _post(self, pid: int, verb: str, **kw: Any):
        chk.check_int("pid", pid, 1)
        return self._sb._run(self._sb._then(h.request(h.Call("POST", self._path(pid, verb), **kw)),
                                            lambda _: None))

    def send_input(self, pid: int, data: bytes | str, eof: bool = False):
        """Bytes (or UTF-8 text) for its stdin or terminal; `eof` closes stdin after."""
        if not isinstance(data, (str, bytes, bytearray)):
            raise ArgumentError(f"data must be str or bytes, got {type(data).__name__}",
                                param="data")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return self._post(pid, "input", content=raw, params={"eof": "true" if eof else "false"},
                          headers={"Content-Type": "application/octet-stream"})

    def close_stdin(self, pid: int):
        return self.send_input(pid, b"", eof=True)

    def signal(self, pid: int, signal: str = "SIGTERM"):
        if signal not in SIGNALS:
            raise ArgumentError(f"signal must be one of {', '.join(SIGNALS)}", param="signal")
        return self._post(pid, "signal", json={"signal": signal})

    def resize(self, pid: int, cols: int, rows: int):
        chk.check_int("cols", cols, 1, 4096)
        chk.check_int("rows", rows, 1, 4096)
        return self._post(pid, "resize", json={"cols": cols, "rows": rows})

    def kill(self, pid: int):
        """SIGKILL to it; False if it was not running."""
        chk.check_int("pid", pid, 1)

        def op() -> h.Op:
            try:
                yield from h.request(h.Call("DELETE", self._path(pid)))
            except NotFoundError:
                return False
            return True
        return self._sb._run(op())
