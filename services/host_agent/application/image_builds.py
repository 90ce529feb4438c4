"""Image builds and deletes on this host: a BuildImage command is recorded,
acked, and built in the background (a build runs for minutes; the command
consumer's slot does not wait for it). Every fact (log parts, built, failed,
deleted) is stored first and published by the outbox relay."""
from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from contracts import Envelope
from contracts.image import (BuildImage, DeleteImage, ImageBuildFailed, ImageBuildLogged,
                             ImageBuildRequested, ImageBuilt, ImageCommand, ImageDeleted)
from contracts.sandbox import Failure

from .records import VmRecords

log = logging.getLogger("corral.host_agent.images")
LOG_FLUSH_S, LOG_PART = 0.5, 8192
BUILD_DISK_MIB = 4096  # a few layers' worth must stay free under the host's reserve
ContextSource = Callable[[str, str, str, int, str], Awaitable[bytes]]


class ImageBuilds:
    """`builder`, `importer` and `bases` are the images adapter's (None: this
    host builds nothing and fails every build it is given)."""

    def __init__(self, host_id: str, records: VmRecords, context: ContextSource,
                 builder: Any = None, importer: Callable[..., Awaitable[Any]] | None = None,
                 bases: Callable[[dict[str, str]], Callable[[str], Any]] | None = None,
                 remove: Callable[[str], Awaitable[bool]] | None = None,
                 tmp_dir: Path | None = None,
                 disk_lacks: Callable[[int], str | None] = lambda _mib: None,
                 prepare: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.host_id, self.records, self.context = host_id, records, context
        self.builder, self.importer, self.bases, self.remove = builder, importer, bases, remove
        self.tmp_dir = tmp_dir
        self.disk_lacks = disk_lacks  # (MiB about to be written) -> why not, or None
        self.prepare = prepare  # (ref) -> templates made for a new image, if configured
        self._background: set[asyncio.Task[None]] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def building(self) -> list[str]:
        """Images being built here now."""
        return list(self._tasks)

    def _ids(self, cmd: ImageCommand) -> dict[str, Any]:
        return dict(op_id=cmd.op_id, org_id=cmd.org_id, image_id=cmd.image_id,
                    traceparent=cmd.traceparent, host_id=self.host_id)

    async def _note(self, image_id: str, fact: Envelope) -> None:
        await asyncio.to_thread(self.records.note_job, image_id, fact.model_dump(mode="json"))

    async def handle(self, cmd: ImageCommand) -> None:
        if isinstance(cmd, BuildImage):
            job, _ = await asyncio.to_thread(self.records.accept_job, cmd.image_id, cmd.org_id)
            if job.state == "building" and cmd.image_id not in self._tasks:
                task = asyncio.ensure_future(self._build(cmd))
                self._tasks[cmd.image_id] = task
                task.add_done_callback(lambda _t: self._tasks.pop(cmd.image_id, None))
        elif isinstance(cmd, DeleteImage):
            await self._delete(cmd)

    async def recover(self) -> list[str]:
        """At start: builds a previous agent left unfinished are failed (their
        VMs were killed with it)."""
        failed = []
        for job in await asyncio.to_thread(self.records.all_jobs):
            if job.state == "building" and job.image_id not in self._tasks:
                await self._note(job.image_id, ImageBuildFailed(
                    op_id=f"op_reconcile_{self.host_id}"[:64], org_id=job.org_id,
                    image_id=job.image_id, host_id=self.host_id, failure=Failure(
                        code="build_failed", message="the host agent restarted during the "
                                                     "build; build again")))
                failed.append(job.image_id)
        return failed

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _build(self, cmd: BuildImage) -> None:
        req: ImageBuildRequested = cmd.request
        ids = self._ids(cmd)
        logs = _LogSink(self, cmd.image_id, ids)
        t0 = time.monotonic()
        fact: Envelope
        try:
            if self.builder is None or self.bases is None or self.importer is None:
                raise _Refused("this host cannot build images")
            lack = await asyncio.to_thread(self.disk_lacks, BUILD_DISK_MIB)
            if lack:
                raise _Refused(f"no space for a build on this host: {lack}")
            blob = await self.context(cmd.image_id, cmd.org_id, cmd.op_id, req.context_bytes,
                                      req.context_sha256)
            async with asyncio.timeout(req.timeout_s):
                if req.source == "oci":
                    res = await self._import(blob, cmd.org_id)
                else:
                    res = await self.builder.build(
                        self.builder.context(blob), self.bases(req.bases),
                        dockerfile=req.dockerfile, build_args=req.build_args, out=logs.write,
                        vcpus=req.vcpus, memory_mib=req.memory_mib, scope=cmd.org_id)
            fact = ImageBuilt(digest=res.digest, ref=res.ref, size_bytes=res.size_bytes,
                              took_ms=int((time.monotonic() - t0) * 1000),
                              config={k: v for k, v in res.config.items()
                                      if k not in ("digest", "created_at", "size_bytes")},
                              steps=res.steps, **ids)
            log.info("image built", extra={"image_id": cmd.image_id, "digest": res.digest[:16],
                                           "took_ms": fact.took_ms})
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is reported
            line = getattr(e, "line", None)
            reason = getattr(e, "reason", None) or str(e) or e.__class__.__name__
            if isinstance(e, TimeoutError):
                reason = f"the build took longer than {req.timeout_s} s"
            log.warning("image build failed: %s", reason, extra={"image_id": cmd.image_id})
            await logs.write(f"ERROR: {reason}\n")
            fact = ImageBuildFailed(failure=Failure(code="build_failed", message=reason[:2000]),
                                    line=line, **ids)
        await logs.flush()
        await self._note(cmd.image_id, fact)
        if isinstance(fact, ImageBuilt) and self.prepare is not None:
            t = asyncio.ensure_future(self._prepare(fact.ref))
            self._background.add(t)
            t.add_done_callback(self._background.discard)

    async def _prepare(self, ref: str) -> None:
        assert self.prepare is not None
        try:
            await self.prepare(ref)
        except Exception:
            log.exception("templates for the new image %s failed", ref)

    async def _import(self, blob: bytes, org_id: str) -> Any:
        assert self.importer is not None
        with tempfile.NamedTemporaryFile(dir=self.tmp_dir, suffix=".tar") as f:
            await asyncio.to_thread(f.write, blob)
            await asyncio.to_thread(f.flush)
            return await self.importer(Path(f.name), org_id)

    async def _delete(self, cmd: DeleteImage) -> None:
        job = await asyncio.to_thread(self.records.job, cmd.image_id)
        if job is not None and job.state == "deleted":
            return
        if job is None:
            job, _ = await asyncio.to_thread(self.records.accept_job, cmd.image_id, cmd.org_id)
        task = self._tasks.get(cmd.image_id)
        if task is not None:  # deleted while building: stop it, and say it ended
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self._note(cmd.image_id, ImageBuildFailed(failure=Failure(
                code="cancelled", message="the image was deleted during its build"),
                **self._ids(cmd)))
        digest = cmd.digest or (job.digest if job is not None else None)
        others = await asyncio.to_thread(self.records.jobs_with_digest, digest) if digest else []
        if digest and self.remove is not None and not [j for j in others
                                                        if j.image_id != cmd.image_id]:
            await self.remove(digest)  # kept while another org's identical image uses it
        await self._note(cmd.image_id, ImageDeleted(**self._ids(cmd)))


class _Refused(Exception):
    pass


class _LogSink:
    """Build output as ImageBuildLogged facts: a part per LOG_PART bytes or
    LOG_FLUSH_S seconds, in order."""

    def __init__(self, builds: ImageBuilds, image_id: str, ids: dict[str, Any]) -> None:
        self.builds, self.image_id, self.ids = builds, image_id, ids
        self.buf, self.seq, self.last = "", 0, time.monotonic()

    async def write(self, text: str) -> None:
        self.buf += text
        if len(self.buf) >= LOG_PART or time.monotonic() - self.last >= LOG_FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        while self.buf:
            part, self.buf = self.buf[:LOG_PART], self.buf[LOG_PART:]
            await self.builds._note(self.image_id, ImageBuildLogged(seq=self.seq, text=part,
                                                                    **self.ids))
            self.seq += 1
        self.last = time.monotonic()
