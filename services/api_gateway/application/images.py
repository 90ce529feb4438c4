"""Custom image use cases on the gateway's store (mixed into SandboxLedger):
request a build (name unique per org, builds in progress capped), fold the
building host's facts in, delete, and resolve an image a create names."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from eventsourcing.domain import Aggregate

from common.eventstore import StoreApp
from contracts.image import (BUILTIN_IMAGES, ImageBuildRequested, ImageDeleteRequested,
                             ImageEvent)

from ..domain.image import Image, OrgImages, org_images_uuid
from .errors import Conflict, NotFound, OutOfOrder, TooMany, Unprocessable

IMAGE_FACTS = frozenset({"ImageBuildScheduled", "ImageBuilt", "ImageBuildFailed",
                         "ImageDeleted"})
REF_RE = re.compile(r"^c-[0-9a-f]{40}$")


@dataclass(frozen=True)
class BuildLimits:
    concurrent_builds: int = 2  # per org
    max_images: int = 50  # per org, building or ready
    vcpus: int = 1
    memory_mib: int = 1024
    timeout_s: int = 1800


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None


class ImageCases(StoreApp):
    def find_image(self, image_id: str, org_id: str | None) -> Image:
        uid = _uuid(image_id)
        img = self._get(uid) if uid else None
        if not isinstance(img, Image) or (org_id is not None and img.org_id != org_id):
            raise NotFound("no such image")
        return img

    def org_images(self, org_id: str) -> OrgImages | None:
        found = self._get(org_images_uuid(org_id))
        return found if isinstance(found, OrgImages) else None

    def ready_refs(self, org_id: str) -> dict[str, str]:
        """The org's ready images, name -> ref (what a FROM may name)."""
        out: dict[str, str] = {}
        for name, iid in (self.org_images(org_id) or OrgImages(org_id)).names.items():
            img = self.find_image(iid, org_id)
            if img.state == "ready" and img.ref:
                out[name] = img.ref
        return out

    def resolve_image(self, org_id: str, image: str) -> str:
        """What a create's `image` boots: a built-in, or the org's ready image by
        name (its ref). Anything else, another org's included, is unknown."""
        if image in BUILTIN_IMAGES:
            return image
        refs = self.ready_refs(org_id)
        if image in refs:
            return refs[image]
        if REF_RE.match(image) and image in refs.values():
            return image  # a fork's snapshot names the ref itself
        raise Unprocessable(f"no image {image!r}: built-in ({', '.join(BUILTIN_IMAGES)}) "
                            "or one of this org's ready images")

    def image_host(self, ref: str, org_id: str) -> str | None:
        """The host holding the org's image `ref` (its sandboxes run there: images
        are not yet copied between hosts); None for a built-in."""
        if not REF_RE.match(ref):
            return None
        for iid in (self.org_images(org_id) or OrgImages(org_id)).names.values():
            img = self.find_image(iid, org_id)
            if img.ref == ref and img.state == "ready":
                return img.host_id
        raise Unprocessable(f"no image {ref!r}")

    def request_build(self, msg: ImageBuildRequested, limits: BuildLimits) -> Image:
        """A building image under a name no other building or ready image of the
        org holds, within the org's builds in progress and image count."""
        if msg.name in BUILTIN_IMAGES:
            raise Conflict(f"{msg.name!r} is a built-in image name")

        def attempt() -> Image:
            org = self.org_images(msg.org_id) or OrgImages(msg.org_id)
            holder = org.holder(msg.name)
            if holder is not None:
                raise Conflict(f"an image named {msg.name!r} exists ({holder}); delete it "
                               "first or choose another name")
            if len(org.building) >= limits.concurrent_builds:
                raise TooMany(f"at most {limits.concurrent_builds} builds at a time per org",
                              30)
            if len(org.names) >= limits.max_images:
                raise TooMany(f"at most {limits.max_images} images per org; delete some", 60)
            img = Image(msg.model_dump(mode="json"))
            org.claim(msg.name, msg.image_id)
            self._save(img, org)
            return img
        return self.retry_on_conflict(attempt, Conflict("images kept changing; retry"))

    def request_image_delete(self, image_id: str, org_id: str, op_id: str,
                             traceparent: str | None) -> Image:
        def attempt() -> Image:
            img = self.find_image(image_id, org_id)
            if img.state in ("deleting", "deleted"):
                return img
            img.record_fact(ImageDeleteRequested(
                op_id=op_id, org_id=org_id, image_id=image_id, host_id=img.host_id,
                digest=img.digest, traceparent=traceparent).model_dump(mode="json"))
            pending: list[Aggregate] = [img]
            org = self.org_images(org_id)
            if org is not None and org.holder(img.name) == image_id:
                org.release(img.name, image_id)
                pending.append(org)
            self._save(*pending)
            return img
        return self.retry_on_conflict(attempt, Conflict("image kept changing; retry"))

    def ingest_image_fact(self, msg: ImageEvent) -> bool:
        def attempt() -> bool:
            img = self.find_image(msg.image_id, None)
            if img.org_id != msg.org_id:
                raise ValueError("fact's org does not own the image")
            if msg.via_host is not None and img.host_id is None:
                raise OutOfOrder(f"{msg.type} from {msg.via_host} before the build's placement")
            if msg.via_host is not None and img.host_id != msg.via_host:
                raise ValueError(f"{msg.type} from {msg.via_host}; {img.host_id} builds it")
            if not img.record_fact(msg.model_dump(mode="json"), own=False):
                return False
            pending: list[Aggregate] = [img]
            org = self.org_images(img.org_id)
            if org is not None and img.state in ("ready", "failed"):
                if img.state == "failed":
                    org.release(img.name, str(img.id))
                else:
                    org.build_ended(str(img.id))
                pending.append(org)
            self._save(*pending)
            return True
        return self.retry_on_conflict(attempt, Conflict("image kept changing while ingesting"))
