"""A build VM: a microVM booted on a layer, in which a build's steps run
(as any sandbox's commands do: the guest is as untrusted as the Dockerfile),
and whose disk is cut into the next layer after each step."""
from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.dockerfile import Step
from services.host_agent.application.ports import ExecChunk, ExecRequest, VmSpec

from ..qemu.launcher import run_tool

log = logging.getLogger("corral.host_agent.images")
CHUNK = 8 << 20  # COPY payload per file write
Log = Callable[[str], Awaitable[None]]


class StepFailed(Exception):
    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(f"line {step.line}: {reason}")
        self.step, self.reason = step, reason


@dataclass
class BuildVmConfig:
    vcpus: int = 1
    memory_mib: int = 1024
    step_timeout_s: float = 900.0
    resolver: str | None = None  # nameserver for RUN (the image keeps its own resolv.conf)


class BuildVm:
    def __init__(self, driver: Any, record: Any, cfg: BuildVmConfig) -> None:
        self.driver, self.record, self.cfg = driver, record, cfg
        self.sid = f"build-{secrets.token_hex(6)}"
        self.key: str | None = None  # the layer the disk holds now
        self.started = False

    async def start(self, ref: str, key: str) -> None:
        spec = VmSpec(self.sid, None, image=ref, vcpus=self.cfg.vcpus,
                      memory_mib=self.cfg.memory_mib, egress=True, cold_boot=True)
        self.started = True
        await self.driver.start(spec, self.record)
        self.key = key

    async def close(self) -> None:
        if self.started:
            self.started = False
            resources = getattr(self.record, "by_sid", {}).get(self.sid, {})
            await asyncio.shield(self.driver.destroy(self.sid, dict(resources)))

    async def _exec(self, argv: list[str], step: Step, *, user: str | None = "root",
                    env: dict[str, str] | None = None, cwd: str = "/",
                    out: Log | None = None, timeout: float = 120.0) -> None:
        async def chunk(c: ExecChunk) -> None:
            if out is not None:
                await out(c.data.decode(errors="replace"))
        r = await self.driver.exec(self.sid, ExecRequest(
            argv, env=env or {}, cwd=cwd, user=user, timeout_s=timeout,
            output_cap=256 << 10), chunk if out else None)
        if r.timed_out:
            raise StepFailed(step, f"timed out after {timeout:.0f} s")
        if r.exit_code != 0:
            tail = (r.stderr or r.stdout)[-600:].decode(errors="replace").strip()
            raise StepFailed(step, f"{argv[0] if len(argv) < 3 else step.op.upper()} exited "
                                   f"with {r.exit_code}" + (f": {tail}" if tail else ""))

    async def run(self, step: Step, payload: bytes | None, out: Log) -> None:
        await self._exec(["mkdir", "-p", step.workdir], step)
        if step.op == "run":
            await self._run(step, out)
        elif step.op == "copy" and payload is not None:
            await self._copy(step, payload)
        await self._settle()
        await self._exec(["sync"], step)

    async def _settle(self) -> None:
        """No process of a step outlives it (each RUN starts afresh, as in Docker,
        and nothing writes while the disk is cut): all but the agent killed."""
        try:
            await self.driver.exec(self.sid, ExecRequest(
                ["/bin/sh", "-c", "kill -KILL -1 2>/dev/null; exit 0"], timeout_s=30))
        except Exception as e:  # noqa: BLE001 - an image without a shell runs no daemons
            log.info("no process sweep in the build VM: %r", e)

    async def _run(self, step: Step, out: Log) -> None:
        saved = None
        if self.cfg.resolver:  # the build's resolver for this step only
            try:
                saved = await self.driver.get_file(self.sid, "/etc/resolv.conf")
            except Exception:  # noqa: BLE001 - none in the image
                saved = b""
            await self.driver.put_file(self.sid, "/etc/resolv.conf",
                                       f"nameserver {self.cfg.resolver}\n".encode())
        try:
            await self._exec(list(step.argv), step, user=step.user, env=step.env,
                             cwd=step.workdir, out=out, timeout=self.cfg.step_timeout_s)
        finally:
            if saved is not None:
                await self.driver.put_file(self.sid, "/etc/resolv.conf", saved)

    async def _copy(self, step: Step, payload: bytes) -> None:
        d = f"/tmp/.corral-copy-{secrets.token_hex(4)}"
        await self._exec(["mkdir", "-p", d], step)
        for i in range(0, max(len(payload), 1), CHUNK):
            await self.driver.put_file(self.sid, f"{d}/{i // CHUNK:06d}", payload[i:i + CHUNK])
        script = f'cat {d}/* | tar -x -p -C / -f - && rm -rf {d}'
        await self._exec(["/bin/sh", "-c", script], step, timeout=self.cfg.step_timeout_s)
        if step.chown and not all(p.isdigit() for p in step.chown.split(":")):
            await self._exec(["/bin/sh", "-c", 'chown -R "$1" -- "$2"', "chown", step.chown,
                              step.dest], step)

    async def cut(self, dest: Path) -> None:
        """The disk as it is now (the guest synced it), flattened to a raw ext4."""
        overlay = self.driver.launcher.layout(self.sid).overlay
        await run_tool("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                       str(overlay), str(dest))
