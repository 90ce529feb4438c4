"""Background processes and PTYs inside a sandbox: gateway -> host agent."""
from __future__ import annotations

import base64
from typing import Literal

from pydantic import Field, model_validator

from .rpc import HostRequest, RpcModel

Signal = Literal["SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM",
                 "SIGCONT", "SIGSTOP"]
MAX_INPUT = 1 << 20


class HostProc(HostRequest):
    """`spawn` (cmd, env, cwd, user, tag, timeout_s, stdin, cols/rows for a
    PTY), `attach`, `input` (data_b64, eof), `signal`, `resize` (cols, rows),
    `ps`; `detach` ends the stream `stream_id` (the process runs on);
    `connect` opens a TCP connection to `port` on the guest's loopback, streamed
    like a process (its pid then names it for `input`; `eof` half-closes);
    `watch` a directory (`path`, `recursive`): streamed as `events` (JSON
    lines `{"name", "op"}`), or kept for `poll`; `close` ends a watch or a
    connection.
    On `proc` the answer is HostProcResult; on `proc.stream` (spawn, attach)
    it is Done, then HostExecChunk messages: `start` (pid), `stdout`/`stderr`/
    `pty` (data_b64), then one `exit` or `error`. A stream ends after
    `stream_s` whatever happens (its process runs on)."""
    action: Literal["spawn", "attach", "input", "signal", "resize", "ps", "detach", "connect",
                    "watch", "poll", "close"]
    pid: int | None = Field(default=None, ge=1, le=(1 << 31) - 1)
    cmd: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    cwd: str | None = Field(default=None, max_length=4096)
    user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$")
    tag: str | None = Field(default=None, max_length=256)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    stdin: bool = False
    cols: int | None = Field(default=None, ge=1, le=4096)
    rows: int | None = Field(default=None, ge=1, le=4096)
    data_b64: str = Field(default="", max_length=(MAX_INPUT // 3 + 1) * 4, repr=False)
    eof: bool = False
    signal: Signal | None = None
    stream_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{16,64}$")
    stream_s: float = Field(default=3600, gt=0, le=86400)
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="connect: a TCP port on the guest's own loopback")
    path: str | None = Field(default=None, max_length=4096, description="watch: a directory")
    recursive: bool = False

    @model_validator(mode="after")
    def _fields(self) -> HostProc:
        if (self.cols is None) != (self.rows is None):
            raise ValueError("give both cols and rows, or neither")
        needs = {"spawn": self.cmd, "signal": self.signal, "detach": self.stream_id,
                 "resize": self.cols, "connect": self.port, "watch": self.path}
        if self.action in needs and not needs[self.action]:
            raise ValueError(f"{self.action} needs its arguments")
        if self.action in ("attach", "input", "signal", "resize", "poll", "close") \
                and self.pid is None:
            raise ValueError(f"{self.action} needs a pid")
        return self

    def data(self) -> bytes:
        return base64.b64decode(self.data_b64)


class HostProcInfo(RpcModel):
    pid: int
    cmd: list[str]
    cwd: str
    tag: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    pty: bool = False
    stdin: bool = False


class WatchEvent(RpcModel):
    name: str = Field(description="relative to the watched directory")
    op: Literal["create", "write", "remove", "rename", "chmod"]


class HostProcResult(RpcModel):
    pid: int | None = None
    procs: list[HostProcInfo] | None = None
    found: bool = True
    events: list[WatchEvent] | None = None
    overflowed: bool = Field(default=False, description="events were dropped (too many)")
