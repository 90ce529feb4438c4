"""Dockerfile builds: each filesystem step runs in a build VM and becomes a
layer keyed by (parent layer, instruction, env/user/workdir, files copied);
a step whose key is already stored is reused, and two builds of one key do
the work once (the store's lock)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.dockerfile import DockerfileError, Step, parse

from .build_vm import BuildVm, BuildVmConfig, Log, StepFailed
from common.buildcontext import BuildContext, ContextError, pack
from .store import ImageStore, content_key, image_ref, layer_ref

log = logging.getLogger("corral.host_agent.images")
LAYOUT = "corral-build/1"


@dataclass(frozen=True)
class Base:
    key: str  # the content key layers chain from
    ref: str  # what a VM boots ("default", "c-...")
    rootfs: Path


@dataclass
class BuildResult:
    digest: str
    ref: str
    size_bytes: int
    config: dict
    steps: list[dict] = field(default_factory=list)  # line, op, cached, ms


class BuildError(Exception):
    """The build cannot go on: `line` names the Dockerfile line when one is to blame."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.reason, self.line = reason, line


class ImageBuilder:
    def __init__(self, driver: Any, store: ImageStore, record: Any,
                 cfg: BuildVmConfig | None = None, *, context_max_bytes: int = 64 << 20,
                 build_timeout_s: float = 3600.0) -> None:
        self.driver, self.store, self.record = driver, store, record
        self.cfg = cfg or BuildVmConfig()
        self.context_max_bytes = context_max_bytes
        self.build_timeout_s = build_timeout_s

    def context(self, blob: bytes) -> BuildContext:
        try:
            return BuildContext.from_tar(blob, self.context_max_bytes)
        except ContextError as e:
            raise BuildError(str(e)) from None

    async def build(self, context: BuildContext, base_of: Callable[[str], Base], *,
                    dockerfile: str = "Dockerfile", build_args: dict[str, str] | None = None,
                    out: Log | None = None, vcpus: int | None = None,
                    memory_mib: int | None = None, scope: str = "") -> BuildResult:
        """`scope` (the org): layers are shared only by builds of one scope, so
        no tenant learns from a cache hit what another built (a build arg, say)."""
        async def say(text: str) -> None:
            if out is not None:
                await out(text)
        try:
            plan = parse(context.text(dockerfile), build_args)
        except (DockerfileError, ContextError) as e:
            raise BuildError(str(e), getattr(e, "line", None)) from None
        try:
            base = base_of(plan.base)
        except KeyError as e:
            raise BuildError(f"FROM {plan.base}: {e.args[0] if e.args else 'unknown image'}",
                             1) from None
        cfg = replace(self.cfg, vcpus=vcpus or self.cfg.vcpus,
                      memory_mib=memory_mib or self.cfg.memory_mib)
        vm: BuildVm | None = None
        key, ref, rootfs = content_key(LAYOUT, "scope", scope, base.key), base.ref, base.rootfs
        steps: list[dict] = []
        try:
            async with asyncio.timeout(self.build_timeout_s):
                for n, step in enumerate(plan.steps, 1):
                    t0 = time.monotonic()
                    payload, files = self._payload(context, step)
                    new = content_key(LAYOUT, key, step.op, step.argv, step.dest, step.chown,
                                      step.env, step.user, step.workdir, files)
                    await say(f"Step {n}/{len(plan.steps)} (line {step.line}): "
                              f"{step.op.upper()} {step.text}\n")
                    cached = self.store.has_layer(new)
                    if not cached:
                        async with self.store.lock(new):
                            cached = self.store.has_layer(new)
                            if not cached:
                                vm = await self._on(vm, key, ref, cfg)
                                await vm.run(step, payload, say)
                                tmp = self.store.tmp_file()
                                await vm.cut(tmp)
                                self.store.publish_layer(new, tmp, {"parent": key,
                                                                    "line": step.line})
                                vm.key = new
                    key, ref, rootfs = new, layer_ref(new), self.store.layer_file(new)
                    ms = int((time.monotonic() - t0) * 1000)
                    steps.append({"line": step.line, "op": step.op, "cached": cached, "ms": ms})
                    await say(f" ---> {'cached' if cached else 'done'} {new[:12]} ({ms} ms)\n")
        except StepFailed as e:
            raise BuildError(e.reason, e.step.line) from None
        except ContextError as e:
            raise BuildError(str(e)) from None
        except TimeoutError:
            raise BuildError(f"the build took longer than {self.build_timeout_s:.0f} s") from None
        finally:
            if vm is not None:
                await vm.close()
        config = {"base": plan.base, "env": plan.env, "cwd": plan.workdir, "user": plan.user,
                  "cmd": plan.cmd, "entrypoint": plan.entrypoint, "labels": plan.labels,
                  "exposed": plan.exposed}
        digest = content_key(LAYOUT, key, config)
        async with self.store.lock(digest):
            d = self.store.publish_image(digest, rootfs, config)
        size = self.store.config(digest)["size_bytes"]
        await say(f"Image {digest[:12]} ready ({size >> 20} MiB)\n")
        return BuildResult(digest, image_ref(digest), size, self.store.config(d.name), steps)

    def _payload(self, context: BuildContext, step: Step) -> tuple[bytes | None, str]:
        if step.op != "copy":
            return None, ""
        uid = gid = 0
        if step.chown and all(p.isdigit() for p in step.chown.split(":")):
            parts = step.chown.split(":")
            uid, gid = int(parts[0]), int(parts[-1])
        try:
            blob, digest = pack(context.select(step.sources, step.dest), uid, gid)
        except ContextError as e:
            raise BuildError(str(e), step.line) from None
        return blob, digest

    async def _on(self, vm: BuildVm | None, key: str, ref: str, cfg: BuildVmConfig) -> BuildVm:
        """A build VM whose disk holds layer `key`."""
        if vm is not None and vm.key == key:
            return vm
        if vm is not None:
            await vm.close()
        vm = BuildVm(self.driver, self.record, cfg)
        try:
            await vm.start(ref, key)
        except BaseException:
            await vm.close()
            raise
        return vm
