"""FAKE VMM driver for control-plane tests only: a "VM" is a detached idle
process (so it survives an agent crash like a real qemu does). No guest,
no exec, no files. Never used unless CORRAL_DRIVER=fake."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..application.ports import (ExecChunk, ExecRequest, ExecResult, FileListing, FileOp, FileStat,
                                 ProcAnswer, ProcCall, ProcSink, ReconcileReport,
                                 ResourceRecorder, SnapshotInfo, VmInfo, VmSpec)
from .procs import is_zombie

MARK = "corral-fakevm"


class FakeVmmDriver:
    accel = "fake"

    def __init__(self, state_dir: Path, boot_delay_s: float = 0.05, fail_images: tuple = ()):
        self.state_dir = Path(state_dir)
        self.boot_delay_s = boot_delay_s
        self.fail_images = fail_images

    def _cmd(self, sandbox_id: str) -> list[str]:
        return [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)",
                MARK, str(self.state_dir.resolve()), sandbox_id]

    async def snapshot(self, sandbox_id: str, dest_dir: str) -> SnapshotInfo:
        """A FAKE snapshot: a directory with a manifest, no memory image."""
        dest = Path(dest_dir)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "manifest.json").write_text(json.dumps({"sandbox_id": sandbox_id}))
        tmp.replace(dest)
        return SnapshotInfo(sandbox_id, str(dest), "default", 1, 256, 0, 0, 0)

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return {}

    async def prepare(self, image: str, vcpus: int, memory_mib: int) -> bool:
        return False  # no templates here

    async def start(self, spec: VmSpec, record: ResourceRecorder) -> VmInfo:
        t0 = time.monotonic()
        if spec.snapshot_dir and not (Path(spec.snapshot_dir) / "manifest.json").exists():
            raise FileNotFoundError(f"no snapshot at {spec.snapshot_dir}")
        if spec.image in self.fail_images:
            raise RuntimeError(f"image {spec.image!r} cannot boot (fake failure)")
        # Detached on purpose (like qemu it must outlive this process): not an asyncio child.
        proc = subprocess.Popen(self._cmd(spec.sandbox_id), start_new_session=True,  # noqa: ASYNC220
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        await record(spec.sandbox_id, "pid", str(proc.pid))
        await asyncio.sleep(self.boot_delay_s)
        return VmInfo(spec.sandbox_id, proc.pid, self.accel,
                      boot_ms=int((time.monotonic() - t0) * 1000))

    def _ours(self, pid: int, sandbox_id: str | None = None) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (not is_zombie(pid) and MARK.encode() in argv
                and str(self.state_dir.resolve()).encode() in argv
                and (sandbox_id is None or sandbox_id.encode() in argv))

    async def is_alive(self, sandbox_id: str, resources: dict[str, str]) -> bool:
        pid = resources.get("pid")
        return bool(pid and self._ours(int(pid), sandbox_id))

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # not our child: gone once it is a zombie
            for _ in range(200):
                if is_zombie(pid):
                    return
                time.sleep(0.01)

    async def stop(self, sandbox_id: str) -> None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._ours(int(entry.name), sandbox_id):
                await asyncio.to_thread(self._kill, int(entry.name))

    async def destroy(self, sandbox_id: str, resources: dict[str, str]) -> None:
        pid = resources.get("pid")
        if pid and self._ours(int(pid), sandbox_id):
            await asyncio.to_thread(self._kill, int(pid))

    async def pause(self, sandbox_id: str) -> None:
        return None

    async def resume(self, sandbox_id: str) -> None:
        return None

    async def exec(self, sandbox_id: str, req: ExecRequest,
                   on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None
                   ) -> ExecResult:
        raise NotImplementedError("the fake driver has no guest")

    async def put_file(self, sandbox_id: str, path: str | bytes, data: bytes,
                       append: bool = False) -> None:
        raise NotImplementedError("the fake driver has no guest")

    async def get_range(self, sandbox_id: str, path: str | bytes, offset: int,
                        length: int) -> tuple[bytes, int]:
        raise NotImplementedError("the fake driver has no guest")

    async def get_file(self, sandbox_id: str, path: str | bytes) -> bytes:
        raise NotImplementedError("the fake driver has no guest")

    async def list_files(self, sandbox_id: str, path: str | bytes) -> FileListing:
        raise NotImplementedError("the fake driver has no guest")

    async def file_op(self, sandbox_id: str, op: FileOp) -> FileStat | None:
        raise NotImplementedError("the fake driver has no guest")

    async def proc(self, sandbox_id: str, call: ProcCall,
                   on_event: ProcSink | None = None) -> ProcAnswer:
        raise NotImplementedError("the fake driver has no guest")

    async def reconcile(self, recorded: dict[str, dict[str, str]], record: ResourceRecorder,
                        keep: dict[str, dict[str, str]] | None = None) -> ReconcileReport:
        adopted, cleaned, killed = [], [], []
        known_pids = set()
        for sid, res in recorded.items():
            if await self.is_alive(sid, res):
                adopted.append(sid)
                known_pids.add(int(res["pid"]))
            else:
                cleaned.append(sid)
        for entry in Path("/proc").iterdir():
            pid = int(entry.name) if entry.name.isdigit() else 0
            if pid and pid not in known_pids and self._ours(pid):
                await asyncio.to_thread(self._kill, int(entry.name))
                killed.append(entry.name)
        return ReconcileReport(adopted, cleaned, killed)

    async def close(self) -> None:
        return None
