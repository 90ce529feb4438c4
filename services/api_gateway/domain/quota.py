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
