"""The image use cases of the REST edge: a build is checked before it is
accepted (the context is a readable tar, the Dockerfile parses, FROM names
an image the org may use), its context kept until a host has built it, and
its log followed from the durable stream."""
from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from common.buildcontext import BuildContext, ContextError
from common.dockerfile import DockerfileError, parse
from common.timefmt import parse_time
from common.tracing import current_traceparent
from contracts import InvalidMessage, parse_message
from contracts.image import BUILTIN_IMAGES, ImageBuildRequested, ImageEvent

from ..domain.image import Image
from .errors import NotFound, OutOfOrder, TooLarge, Unprocessable
from .images import BuildLimits
from .ledger import SandboxLedger
from .ports import EventSource
from .waiters import Waiters

OCI_TYPES = ("application/vnd.oci.image.layout.v1+tar", "application/x-docker-archive")
CONTEXT_PART = 512 * 1024  # per RPC answer (base64 stays under the bus's 1 MiB)
END = ("ImageBuilt", "ImageBuildFailed")
END_FOLD_WAIT_S = 10.0  # a build log's end waits this long for the image to show it


class ContextStore(Protocol):
    async def put(self, image_id: str, org_id: str, data: bytes) -> None: ...
    async def read(self, image_id: str, org_id: str, offset: int, n: int
                   ) -> tuple[bytes, int] | None: ...
    async def delete(self, image_id: str) -> None: ...


class Images:
    def __init__(self, ledger: SandboxLedger, contexts: ContextStore, source: EventSource,
                 waiters: Waiters, limits: BuildLimits | None = None,
                 max_context_bytes: int = 64 << 20) -> None:
        self.ledger, self.contexts, self.source = ledger, contexts, source
        self.waiters = waiters
        self.limits = limits or BuildLimits()
        self.max_context_bytes = max_context_bytes

    async def build(self, org_id: str, name: str, body: bytes, content_type: str,
                    dockerfile: str, build_args: dict[str, str], op_id: str) -> Image:
        if len(body) > self.max_context_bytes:
            raise TooLarge(f"the build context is {len(body)} bytes; the limit is "
                           f"{self.max_context_bytes}")
        oci = content_type in OCI_TYPES
        refs = await asyncio.to_thread(self.ledger.ready_refs, org_id)
        base = await asyncio.to_thread(self._check, body, oci, dockerfile, build_args, refs)
        bases = {base: refs[base]} if base in refs else {}  # the one FROM names
        image_id = str(uuid.uuid4())
        msg = ImageBuildRequested(
            op_id=op_id, org_id=org_id, image_id=image_id, name=name,
            source="oci" if oci else "dockerfile", dockerfile=dockerfile,
            build_args=build_args, bases=bases, context_bytes=len(body),
            context_sha256=hashlib.sha256(body).hexdigest(), vcpus=self.limits.vcpus,
            memory_mib=self.limits.memory_mib, timeout_s=self.limits.timeout_s,
            traceparent=current_traceparent())
        await self.contexts.put(image_id, org_id, body)
        try:
            return await asyncio.to_thread(self.ledger.request_build, msg, self.limits)
        except BaseException:
            await self.contexts.delete(image_id)
            raise

    def _check(self, body: bytes, oci: bool, dockerfile: str, build_args: dict[str, str],
               bases: dict[str, str]) -> str | None:
        """The image FROM names (None for an archive); Unprocessable if the
        request cannot build."""
        if oci:
            try:
                with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tf:
                    names = {m.name.lstrip("./") for m in tf.getmembers()}
            except tarfile.TarError as e:
                raise Unprocessable(f"the archive is not a readable tar: {e}") from None
            if "index.json" not in names and "manifest.json" not in names:
                raise Unprocessable("neither an OCI layout (index.json) nor a docker save "
                                    "archive (manifest.json)")
            return None
        try:
            plan = parse(BuildContext.from_tar(body, self.max_context_bytes).text(dockerfile),
                         build_args)
        except DockerfileError as e:
            raise Unprocessable(f"{dockerfile}: {e}", line=e.line) from None
        except ContextError as e:
            raise Unprocessable(str(e)) from None
        if plan.base not in BUILTIN_IMAGES and plan.base not in bases:
            raise Unprocessable(f"{dockerfile}: FROM {plan.base}: not a built-in image "
                                f"({', '.join(BUILTIN_IMAGES)}) nor one of this org's ready "
                                "images")
        return plan.base

    async def find(self, image_id: str, org_id: str) -> Image:
        return await asyncio.to_thread(self.ledger.find_image, image_id, org_id)

    async def list(self, org_id: str) -> list[Image]:
        def load() -> list[Image]:
            """Newest first, at most 200, deleted ones left out."""
            org = self.ledger.org_images(org_id)
            out: list[Image] = []
            for iid in reversed(org.history if org else []):
                img = self.ledger.find_image(iid, org_id)
                if img.state != "deleted":
                    out.append(img)
                if len(out) >= 200:
                    break
            return out
        return await asyncio.to_thread(load)

    async def delete(self, image_id: str, org_id: str, op_id: str) -> Image:
        img = await asyncio.to_thread(self.ledger.request_image_delete, image_id, org_id, op_id,
                                      current_traceparent())
        await self.contexts.delete(image_id)
        return img

    async def wait(self, img: Image, org_id: str, timeout_s: float) -> Image:
        return await self.waiters.until(str(img.id), lambda: self.find(str(img.id), org_id),
                                        lambda i: i.state != "building",
                                        time.monotonic() + timeout_s)

    async def context_part(self, image_id: str, org_id: str, host_id: str,
                           offset: int) -> tuple[bytes, int]:
        """Only the host the build was placed on reads the context, while it builds."""
        img = await self.find(image_id, org_id)
        if img.host_id is None:
            raise OutOfOrder("the build's placement is not known yet")
        if img.host_id != host_id or img.state != "building":
            raise NotFound("no build of this image on this host")
        part = await self.contexts.read(image_id, org_id, offset, CONTEXT_PART)
        if part is None:
            raise NotFound("the build context is gone")
        return part

    async def folded(self, msg: ImageEvent) -> None:
        """After a fact is folded in: a build that ended needs its context no more."""
        if msg.type in END or msg.type == "ImageDeleted":
            await self.contexts.delete(msg.image_id)
        self.waiters.notify(msg.image_id)

    async def logs(self, image_id: str, org_id: str, after: int | None,
                   idle_s: float = 15) -> AsyncIterator[dict[str, Any] | None]:
        """The build's output (and its end) from the stream, for ever; None when
        idle (a keepalive). Only the building host's lines are shown."""
        img = await self.find(image_id, org_id)
        subjects = [f"corral.evt.hostfact.*.{org_id}.{image_id}.{t}"
                    for t in ("ImageBuildLogged", *END)]
        since = None if after is not None else parse_time(img.created_at)
        async for item in self.source.follow(subjects, after, since, idle_s):
            if item is None:
                yield None
                continue
            seq, subject, raw = item
            try:
                msg = parse_message(raw, subject=subject)
            except InvalidMessage:
                continue
            if img.host_id is None or msg.via_host != img.host_id:
                img = await self.find(image_id, org_id)  # placed since: look again
                if msg.via_host != img.host_id:
                    continue
            if msg.type in END:  # shown once folded in here too: a GET after it agrees
                await self.wait(img, org_id, END_FOLD_WAIT_S)
            yield {"seq": seq, **msg.model_dump(mode="json")}
