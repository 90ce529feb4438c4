"""Image builds on the scheduler's store (mixed into Scheduler): a build VM is
placed like a sandbox (its vCPUs and memory are allocated on the host until
the host reports the build's end), under the image's id."""
from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from common.eventstore import StoreApp
from contracts import Envelope
from contracts.image import (BuildImage, DeleteImage, ImageBuildFailed, ImageBuildRequested,
                             ImageBuildScheduled, ImageDeleted, ImageDeleteRequested, ImageEvent)
from contracts.sandbox import Failure

from ..domain.host import Host
from ..domain.placement import Placement


class NoCapacity(Exception):
    pass


class WrongSource(ValueError):
    """A host reported on a sandbox (or build) it does not hold (never applies)."""


def envelope_doc(msg: Envelope) -> dict[str, Any]:
    return msg.model_dump(mode="json")


def _ids(msg: ImageEvent) -> dict[str, Any]:
    return dict(op_id=msg.op_id, org_id=msg.org_id, image_id=msg.image_id,
                traceparent=msg.traceparent)


class BuildCases(StoreApp):
    def placement(self, sandbox_id: str) -> Placement | None: ...
    def host(self, host_id: str) -> Host | None: ...
    def _choose(self, alive: list[str], vcpus: int, memory_mib: int) -> Host | None: ...

    def place_build(self, req: ImageBuildRequested, alive: list[str]) -> tuple[Placement, bool]:
        """Once per image: (placement, new). Raises NoCapacity when no host fits now."""
        def attempt() -> tuple[Placement, bool]:
            existing = self.placement(req.image_id)
            if existing is not None:
                return existing, False
            chosen = self._choose(alive, req.vcpus, req.memory_mib)
            if chosen is None:
                raise NoCapacity(f"no host fits a build of {req.vcpus} vCPU / "
                                 f"{req.memory_mib} MiB")
            chosen.allocate(req.image_id, req.org_id, req.vcpus, req.memory_mib, kind="build")
            p = Placement(req.image_id, req.org_id, chosen.host_id,
                          envelope_doc(ImageBuildScheduled(host_id=chosen.host_id, **_ids(req))))
            p.command(envelope_doc(BuildImage(host_id=chosen.host_id, request=req, **_ids(req))))
            self._save(p, chosen)
            return p, True
        return self.retry_on_conflict(attempt, NoCapacity("hosts kept changing; will retry"))

    def fail_build(self, req: ImageBuildRequested, code: str, message: str) -> None:
        failed = ImageBuildFailed(failure=Failure(code=code, message=message), **_ids(req))
        try:
            self._save(Placement(req.image_id, req.org_id, None, envelope_doc(failed)))
        except IntegrityError:
            pass  # decided already

    def build_reported(self, msg: ImageEvent) -> None:
        """ImageBuilt / ImageBuildFailed from the building host: its VM is gone."""
        def attempt() -> None:
            p = self.placement(msg.image_id)
            if p is None or not p.host_id:
                return
            if msg.via_host is not None and msg.via_host != p.host_id:
                raise WrongSource(f"{msg.type} from {msg.via_host}; {p.host_id} builds it")
            to_save: list[Aggregate] = []
            host = self.host(p.host_id)
            if host is not None and host.release(msg.image_id):
                to_save.append(host)
            if p.active:
                p.end(None, status="ended")
                to_save.append(p)
            if to_save:
                self._save(*to_save)
        self.retry_on_conflict(attempt)

    def route_image_delete(self, msg: ImageDeleteRequested) -> None:
        """DeleteImage to the host that built it, once; ImageDeleted at once when
        no live host holds it."""
        def attempt() -> None:
            p = self.placement(msg.image_id)
            if p is not None and msg.event_id in p.handled:
                return
            host = self.host(msg.host_id) if msg.host_id else None
            done = envelope_doc(ImageDeleted(host_id=msg.host_id, **_ids(msg)))
            if p is None:
                self._save(Placement(msg.image_id, msg.org_id, None, done))
                return
            if host is None or host.status == "lost":
                p.command(done, msg.event_id)
            else:
                p.command(envelope_doc(DeleteImage(host_id=host.host_id, digest=msg.digest,
                                            **_ids(msg))), msg.event_id)
            self._save(p)
        self.retry_on_conflict(attempt)
