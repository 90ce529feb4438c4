"""Named, org-owned snapshots of a live sandbox (memory + disk), and forks."""
from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from .envelope import NAME_RE, Envelope, Id
from .sandbox import Failure


class SnapshotEvent(Envelope):
    """Published on the source sandbox's subject: its history shows them."""
    org_id: Id
    sandbox_id: Id
    snapshot_id: Id


class SnapshotRequested(SnapshotEvent):
    type: Literal["SnapshotRequested"] = "SnapshotRequested"
    name: str = Field(min_length=1, max_length=63, pattern=NAME_RE.pattern)
    expires_at: datetime | None = None  # deleted then, unless deleted before


class SnapshotCreated(SnapshotEvent):
    type: Literal["SnapshotCreated"] = "SnapshotCreated"
    host_id: Id
    image: str = Field(max_length=63)
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    size_bytes: int = Field(ge=0)
    took_ms: int = Field(ge=0)


class SnapshotFailed(SnapshotEvent):
    type: Literal["SnapshotFailed"] = "SnapshotFailed"
    host_id: Id | None = None
    failure: Failure


class SnapshotDeleteRequested(SnapshotEvent):
    type: Literal["SnapshotDeleteRequested"] = "SnapshotDeleteRequested"
    host_id: Id | None = None  # where it was taken; None if it never was


class SnapshotDeleted(SnapshotEvent):
    type: Literal["SnapshotDeleted"] = "SnapshotDeleted"
    host_id: Id | None = None


class SnapshotCommand(Envelope):
    KIND: ClassVar[str] = "command"
    host_id: Id
    org_id: Id
    sandbox_id: Id
    snapshot_id: Id


class TakeSnapshot(SnapshotCommand):
    type: Literal["TakeSnapshot"] = "TakeSnapshot"


class DeleteSnapshot(SnapshotCommand):
    type: Literal["DeleteSnapshot"] = "DeleteSnapshot"
