"""Snapshot aggregate: an org-owned image of one sandbox's memory and disk,
held on the host that took it (forks are placed there)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from common.timefmt import parse_time, utc_text

from .facts import FactLog


class Snapshot(FactLog, Aggregate):
    @staticmethod
    def create_id(envelope: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(envelope["snapshot_id"])

    @event("Requested")
    def __init__(self, envelope: dict[str, Any]):
        self.org_id: str = envelope["org_id"]
        self.sandbox_id: str = envelope["sandbox_id"]
        self.name: str = envelope["name"]
        self.requested_at: str = envelope["occurred_at"]
        self.state = "pending"  # pending | ready | failed | deleting | deleted
        self.host_id: str | None = None
        self.shape: dict[str, Any] = {}
        self.failure: dict[str, str] | None = None
        self.seen: list[str] = [envelope["event_id"]]
        ttl_end = envelope.get("expires_at")
        self.expires_at = utc_text(parse_time(ttl_end)) if ttl_end else None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and parse_time(self.expires_at) <= now

    @event("Fact")
    def _fact(self, envelope: dict[str, Any]) -> None:
        self._apply(envelope)

    @event("Folded")
    def _folded(self, fact: dict[str, Any]) -> None:
        self._apply(fact)

    def _apply(self, envelope: dict[str, Any]) -> None:
        self.seen.append(envelope["event_id"])
        kind = envelope["type"]
        if kind == "SnapshotCreated" and self.state == "pending":
            self.state, self.host_id = "ready", envelope["host_id"]
            self.shape = {k: envelope[k] for k in ("image", "vcpus", "memory_mib", "size_bytes")}
        elif kind == "SnapshotFailed" and self.state == "pending":
            self.state, self.failure = "failed", envelope["failure"]
        elif kind == "SnapshotDeleteRequested" and self.state != "deleted":
            self.state = "deleting"
        elif kind == "SnapshotDeleted":
            self.state = "deleted"


def snapshot_view(s: Snapshot) -> dict[str, Any]:
    return {"id": str(s.id), "name": s.name, "org_id": s.org_id, "sandbox_id": s.sandbox_id,
            "state": s.state, "host_id": s.host_id, "created_at": s.requested_at,
            "failure": s.failure, "expires_at": s.expires_at, **s.shape}
