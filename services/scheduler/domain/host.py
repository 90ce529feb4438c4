"""Host aggregate: registered capacity, allocations, liveness transitions.

Heartbeats are not stored (they would flood the store); only transitions
are: registered, lost, back. Allocations change with every placement, so the
store's version check serialises two schedulers placing on one host.
"""
from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

NAMESPACE = uuid.UUID("0b7e9d02-5d7c-4d0e-8f5e-2a1c3b4d5e6f")


def host_uuid(host_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"host/{host_id}")


class Host(Aggregate):
    @staticmethod
    def create_id(host_id: str, **_: Any) -> uuid.UUID:
        return host_uuid(host_id)

    @event("Registered")
    def __init__(self, host_id: str, hostname: str, capacity: dict[str, int], accel: str):
        self.host_id = host_id
        self.hostname = hostname
        self.capacity = capacity
        self.accel = accel
        self.status = "ready"  # ready | lost | cordoned
        self.allocations: dict[str, dict[str, Any]] = {}

    @event("Updated")
    def update(self, hostname: str, capacity: dict[str, int], accel: str) -> None:
        self.hostname, self.capacity, self.accel = hostname, capacity, accel

    @property
    def used_vcpus(self) -> int:
        return sum(a["vcpus"] for a in self.allocations.values())

    @property
    def used_memory_mib(self) -> int:
        return sum(a["memory_mib"] for a in self.allocations.values())

    def fits(self, vcpus: int, memory_mib: int) -> bool:
        c = self.capacity
        return (self.status == "ready"
                and len(self.allocations) < c["max_sandboxes"]
                and self.used_vcpus + vcpus <= c["vcpus"]
                and self.used_memory_mib + memory_mib <= c["memory_mib"])

    @event("Allocated")
    def allocate(self, sandbox_id: str, org_id: str, vcpus: int, memory_mib: int) -> None:
        self.allocations[sandbox_id] = {"org_id": org_id, "vcpus": vcpus,
                                        "memory_mib": memory_mib}

    def release(self, sandbox_id: str) -> bool:
        if sandbox_id not in self.allocations:
            return False
        self._released(sandbox_id)
        return True

    @event("Released")
    def _released(self, sandbox_id: str) -> None:
        self.allocations.pop(sandbox_id, None)

    @event("Lost")
    def mark_lost(self, envelope: dict[str, Any]) -> None:
        self.status = "lost"
        self.allocations = {}

    @event("Back")
    def mark_back(self) -> None:
        self.status = "ready"


class SandboxLostRecord(Aggregate):
    """One stored contract event per lost sandbox, so the relay publishes it."""

    @staticmethod
    def create_id(envelope: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(envelope["event_id"])

    @event("Recorded")
    def __init__(self, envelope: dict[str, Any]):
        self.sandbox_id = envelope["sandbox_id"]
