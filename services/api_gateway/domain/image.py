"""Image aggregate (an org's custom image, built on a host) and OrgImages (an
org's image names and builds in progress: unique names and the concurrent
build limit, exact under concurrency through the store's version check)."""
from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

from .facts import FactLog
from .sandbox import NAMESPACE

LIVE = ("building", "ready")


def org_images_uuid(org_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"images/{org_id}")


class Image(FactLog, Aggregate):
    @staticmethod
    def create_id(envelope: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(envelope["image_id"])

    @event("Requested")
    def __init__(self, envelope: dict[str, Any]):
        self.org_id: str = envelope["org_id"]
        self.name: str = envelope["name"]
        self.source: str = envelope["source"]
        self.created_at: str = envelope["occurred_at"]
        self.state = "building"  # building | ready | failed | deleting | deleted
        self.host_id: str | None = None
        self.digest: str | None = None
        self.ref: str | None = None
        self.size_bytes: int | None = None
        self.config: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []
        self.took_ms: int | None = None
        self.failure: dict[str, Any] | None = None
        self.seen: list[str] = [envelope["event_id"]]

    @event("Fact")
    def _fact(self, envelope: dict[str, Any]) -> None:
        self._apply(envelope)

    @event("Folded")
    def _folded(self, fact: dict[str, Any]) -> None:
        self._apply(fact)

    def _apply(self, e: dict[str, Any]) -> None:
        self.seen.append(e["event_id"])
        kind = e["type"]
        if kind == "ImageBuildScheduled" and self.state == "building":
            self.host_id = e["host_id"]
        elif kind == "ImageBuilt" and self.state == "building":
            self.state, self.host_id = "ready", e["host_id"]
            self.digest, self.ref, self.size_bytes = e["digest"], e["ref"], e["size_bytes"]
            self.config, self.steps, self.took_ms = e["config"], e["steps"], e["took_ms"]
        elif kind == "ImageBuildFailed" and self.state == "building":
            self.state = "failed"
            self.failure = {**e["failure"], **({"line": e["line"]} if e.get("line") else {})}
        elif kind == "ImageDeleteRequested" and self.state != "deleted":
            self.state = "deleting"
        elif kind == "ImageDeleted":
            self.state = "deleted"


def image_view(i: Image) -> dict[str, Any]:
    return {"id": str(i.id), "name": i.name, "org_id": i.org_id, "state": i.state,
            "source": i.source, "digest": i.digest, "size_bytes": i.size_bytes,
            "created_at": i.created_at, "failure": i.failure, "host_id": i.host_id,
            "build_ms": i.took_ms, "steps": i.steps,
            "config": {k: i.config.get(k) for k in ("env", "cwd", "user", "cmd", "entrypoint",
                                                     "labels", "exposed") if k in i.config}}


class OrgImages(Aggregate):
    @staticmethod
    def create_id(org_id: str) -> uuid.UUID:
        return org_images_uuid(org_id)

    @event("Opened")
    def __init__(self, org_id: str):
        self.org_id = org_id
        self.names: dict[str, str] = {}  # name -> image id (building or ready)
        self.building: list[str] = []
        self.history: list[str] = []  # every image id, oldest first (the listing)

    def holder(self, name: str) -> str | None:
        return self.names.get(name)

    @event("Claimed")
    def claim(self, name: str, image_id: str) -> None:
        self.names[name] = image_id
        self.building.append(image_id)
        self.history.append(image_id)

    @event("Ended")
    def build_ended(self, image_id: str) -> None:
        if image_id in self.building:
            self.building.remove(image_id)

    @event("Released")
    def release(self, name: str, image_id: str) -> None:
        """A failed or deleted image gives its name back."""
        if self.names.get(name) == image_id:
            del self.names[name]
        if image_id in self.building:
            self.building.remove(image_id)
