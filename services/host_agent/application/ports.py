"""Ports the host agent's use cases depend on: the VMM driver and its records.

A driver owns every kernel object a VM needs. It reports each one through
`ResourceRecorder` the moment it exists, so a crashed agent can clean up.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class VmSpec:
    sandbox_id: str
    name: str | None
    image: str = "default"
    vcpus: int = 1
    memory_mib: int = 256
    env: dict[str, str] = field(default_factory=dict)
    egress: bool = False
    reuse_disk: bool = False  # restart of a stopped VM: keep its overlay
    cold_boot: bool = False  # never restore from a template / warm pool
    snapshot_dir: str | None = None  # fork: restore this snapshot (driver.snapshot)


@dataclass(frozen=True)
class VmInfo:
    sandbox_id: str
    pid: int | None
    accel: str
    ip: str | None = None
    boot_ms: int | None = None  # create -> guest agent ready with identity, in ms
    start_mode: str = "cold"  # "cold" | "restore" (template/snapshot) | "pool"
    mac: str | None = None
    source: str | None = None  # template key or snapshot dir restored from


@dataclass(frozen=True)
class SnapshotInfo:
    sandbox_id: str
    dir: str
    image: str
    vcpus: int
    memory_mib: int
    state_bytes: int
    overlay_bytes: int
    paused_ms: int  # how long the running sandbox was stopped


@dataclass(frozen=True)
class ExecRequest:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes | None = None
    user: str | None = None  # name or uid[:group] in the guest; None: the image's
    timeout_s: float = 60.0
    output_cap: int = 1 << 20


@dataclass(frozen=True)
class ExecChunk:
    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    duration_ms: int
    timed_out: bool
    truncated: bool = False


@dataclass(frozen=True)
class FileEntry:
    name: str  # for display: bytes that are not UTF-8 replaced
    size: int
    is_dir: bool
    mode: int
    name_b64: str | None = None  # the exact bytes, when the name is not UTF-8


@dataclass(frozen=True)
class FileStat(FileEntry):
    kind: str = "file"  # file, dir, symlink, other
    mtime: float = 0.0
    target: str | None = None  # a symlink's target


@dataclass(frozen=True)
class FileOp:
    """stat, mkdir (`parents`), remove (`recursive`), rename (to `to`)."""
    action: str
    path: str | bytes
    to: str | bytes | None = None
    recursive: bool = False
    parents: bool = False


@dataclass(frozen=True)
class FileListing:
    entries: list[FileEntry]
    truncated: bool  # the directory holds more than listed


@dataclass(frozen=True)
class ProcCall:
    """A background process call: spawn (`attach`: then its output streams),
    attach, input (`data`, `eof`), signal, resize (`pty`), ps; or connect (a
    TCP connection to `port` inside the guest, streamed like a process); watch
    (a directory: its events streamed, or kept for poll), poll, close."""
    action: str
    pid: int | None = None
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    tag: str | None = None
    timeout_s: float | None = None  # None: until it exits or is killed
    stdin: bool = False
    pty: tuple[int, int] | None = None  # (cols, rows)
    data: bytes = b""
    eof: bool = False
    signal: str | None = None
    attach: bool = True
    port: int | None = None  # connect: a TCP port on the guest's loopback
    path: str | None = None  # watch: a directory
    recursive: bool = False


@dataclass(frozen=True)
class ProcEvent:
    kind: str  # "start" (pid), "stdout", "stderr", "pty" (data)
    data: bytes = b""
    pid: int | None = None


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    cmd: list[str]
    cwd: str
    tag: str | None
    env: dict[str, str]
    pty: bool
    stdin: bool


@dataclass(frozen=True)
class ProcAnswer:
    pid: int | None = None
    procs: list[ProcInfo] | None = None
    exit: ExecResult | None = None  # a stream's end (its output went to on_event)
    events: list[dict[str, str]] | None = None  # poll: {"name", "op"}
    overflowed: bool = False


ProcSink = Callable[[ProcEvent], Awaitable[None]]


@dataclass(frozen=True)
class ReconcileReport:
    adopted: list[str]
    cleaned: list[str]
    killed_unrecorded: list[str]


# record(sandbox_id, kind, value): kind is "pid", "tap", "nft", "overlay", ...;
# value None means the object was removed. Awaited before the object is used.
ResourceRecorder = Callable[[str, str, str | None], Awaitable[None]]
DiskCheck = Callable[[int], str | None]  # MiB about to be written -> why it won't fit


class VmmDriver(Protocol):
    @property
    def accel(self) -> str:
        """"kvm" | "tcg" | "fake"."""
        ...

    async def start(self, spec: VmSpec, record: ResourceRecorder) -> VmInfo: ...
    async def stop(self, sandbox_id: str) -> None: ...
    async def destroy(self, sandbox_id: str, resources: dict[str, str]) -> None: ...
    async def pause(self, sandbox_id: str) -> None: ...
    async def resume(self, sandbox_id: str) -> None: ...
    async def is_alive(self, sandbox_id: str, resources: dict[str, str]) -> bool: ...
    async def exec(
        self, sandbox_id: str, req: ExecRequest,
        on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None,
    ) -> ExecResult: ...
    async def put_file(self, sandbox_id: str, path: str | bytes, data: bytes,
                       append: bool = False) -> None: ...
    async def get_file(self, sandbox_id: str, path: str | bytes) -> bytes: ...
    async def get_range(self, sandbox_id: str, path: str | bytes, offset: int,
                        length: int) -> tuple[bytes, int]:
        """At most `length` bytes from `offset`, and the file's size."""
        ...
    async def list_files(self, sandbox_id: str, path: str | bytes) -> FileListing: ...
    async def file_op(self, sandbox_id: str, op: FileOp) -> FileStat | None: ...
    async def proc(self, sandbox_id: str, call: ProcCall,
                   on_event: ProcSink | None = None) -> ProcAnswer:
        """A background process call; spawn/attach with `on_event` stream until
        the process ends (cancel the call to detach: the process runs on)."""
        ...
    async def snapshot(self, sandbox_id: str, dest_dir: str) -> SnapshotInfo:
        """Live snapshot; `start(VmSpec(..., snapshot_dir=dest_dir))` forks it."""
        ...
    async def prepare(self, image: str, vcpus: int, memory_mib: int) -> bool:
        """Make a size class ready for fast creates (its template); False where
        that means nothing."""
        ...
    def pool_stats(self) -> dict[str, dict[str, int]]: ...
    async def reconcile(
        self, recorded: dict[str, dict[str, str]], record: ResourceRecorder,
        keep: dict[str, dict[str, str]] | None = None,
    ) -> ReconcileReport:
        """`recorded` should be running; `keep` are stopped VMs whose disk and
        network stay for a later restart; anything else we own is removed."""
        ...
    async def close(self) -> None: ...
