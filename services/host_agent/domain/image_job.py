"""ImageJob aggregate: one image this host builds (or built), and every fact
about it, stored so the outbox relay publishes each exactly once."""
from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

NAMESPACE = uuid.UUID("5b7f1c2e-3d4a-4e6b-8c9d-0a1b2c3d4e5f")


def job_uuid(image_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"image/{image_id}")


class ImageJob(Aggregate):
    @staticmethod
    def create_id(image_id: str, **_: Any) -> uuid.UUID:
        return job_uuid(image_id)

    @event("Accepted")
    def __init__(self, image_id: str, org_id: str):
        self.image_id = image_id
        self.org_id = org_id
        self.state = "building"  # building | built | failed | deleted
        self.digest: str | None = None
        self.logged = 0  # ImageBuildLogged facts so far (their seq)

    @event("Noted")
    def note(self, envelope: dict[str, Any]) -> None:
        kind = envelope["type"]
        if kind == "ImageBuildLogged":
            self.logged += 1
        elif kind == "ImageBuilt":
            self.state, self.digest = "built", envelope["digest"]
        elif kind == "ImageBuildFailed":
            self.state = "failed"
        elif kind == "ImageDeleted":
            self.state = "deleted"
