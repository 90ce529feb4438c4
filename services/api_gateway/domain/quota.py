"""Per-org live sandbox count as an aggregate: exact under concurrency, because
every create and every release goes through the store's version check."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from eventsourcing.domain import Aggregate, event

from .sandbox import NAMESPACE


def org_live_uuid(org_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"live/{org_id}")


@dataclass(frozen=True)
class Limits:
    max_live: int = 50
    max_vcpus: int = 8
    max_memory_mib: int = 16384
    max_snapshots: int = 20
    max_snapshot_mib: int = 20480
    max_pending_snapshots: int = 2


class OrgLive(Aggregate):
    @staticmethod
    def create_id(org_id: str) -> uuid.UUID:
        return org_live_uuid(org_id)

    @event("Opened")
    def __init__(self, org_id: str):
        self.org_id = org_id
        self.live: list[str] = []

    def has_room(self, limits: Limits) -> bool:
        return len(self.live) < limits.max_live

    @event("Reserved")
    def reserve(self, sandbox_id: str) -> None:
        self.live.append(sandbox_id)

    def release(self, sandbox_id: str) -> bool:
        if sandbox_id not in self.live:
            return False
        self._released(sandbox_id)
        return True

    @event("Released")
    def _released(self, sandbox_id: str) -> None:
        self.live.remove(sandbox_id)


def org_snapshots_uuid(org_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"snapshots/{org_id}")


MIB = 1 << 20


class OrgSnapshots(Aggregate):
    """An org's held snapshots and their bytes (an estimate until the host
    reports the size), so the count and bytes quotas hold across instances."""

    @staticmethod
    def create_id(org_id: str) -> uuid.UUID:
        return org_snapshots_uuid(org_id)

    @event("Opened")
    def __init__(self, org_id: str):
        self.org_id = org_id
        self.held: dict[str, int] = {}  # snapshot id -> bytes
        self.pending: list[str] = []  # not yet sized by its host

    def refusal(self, limits: Limits, estimate: int) -> str | None:
        """Why one more snapshot of `estimate` bytes may not be taken, or None."""
        if len(self.pending) >= limits.max_pending_snapshots:
            return f"at most {limits.max_pending_snapshots} snapshots in progress per org"
        if len(self.held) >= limits.max_snapshots:
            return f"this org already holds {limits.max_snapshots} snapshots; delete one"
        if sum(self.held.values()) + estimate > limits.max_snapshot_mib * MIB:
            return (f"this org's snapshots would exceed {limits.max_snapshot_mib} MiB; "
                    "delete one")
        return None

    @event("Reserved")
    def reserve(self, snapshot_id: str, estimate: int) -> None:
        self.held[snapshot_id] = estimate
        self.pending.append(snapshot_id)

    def size(self, snapshot_id: str, size_bytes: int) -> bool:
        if snapshot_id not in self.pending:
            return False
        self._sized(snapshot_id, size_bytes)
        return True

    @event("Sized")
    def _sized(self, snapshot_id: str, size_bytes: int) -> None:
        self.pending.remove(snapshot_id)
        self.held[snapshot_id] = size_bytes

    def release(self, snapshot_id: str) -> bool:
        if snapshot_id not in self.held:
            return False
        self._released(snapshot_id)
        return True

    @event("Released")
    def _released(self, snapshot_id: str) -> None:
        del self.held[snapshot_id]
        if snapshot_id in self.pending:
            self.pending.remove(snapshot_id)
