"""Host aggregate: registered capacity, allocations, liveness transitions.

Heartbeats are not stored (they would flood the store); only transitions
are: registered, lost, back. Allocations change with every placement, so the
store's version check serialises two schedulers placing on one host.

A lost host keeps its allocations, as *unknown* (`unknown`): its sandboxes
may still run, so their capacity is not handed out again until the host
reports what it runs (or is revoked). Liveness (`status`: ready | lost) and
the administrator's scheduling state
(`scheduling`: open | cordoned | draining) are separate: a cordoned host that
stops heartbeating is still recorded lost, and one that comes back is still
cordoned. Either keeps new placements off the host (`fits`).
"""
from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

from .policy import HostSummary

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
        self.status = "ready"  # ready | lost (liveness) | revoked (for good)
        self.scheduling = "open"  # open | cordoned | draining (administrator's choice)
        self.allocations: dict[str, dict[str, Any]] = {}
        self.unknown: list[str] = []  # allocations held since the host was lost
        self.interval_s: float | None = None  # its heartbeat interval, once heard

    @event("Updated")
    def update(self, hostname: str, capacity: dict[str, int], accel: str,
               interval_s: float | None = None) -> None:
        self.hostname, self.capacity, self.accel = hostname, capacity, accel
        if interval_s is not None:
            self.interval_s = interval_s

    @property
    def heartbeat_interval(self) -> float | None:
        return getattr(self, "interval_s", None)  # None in histories from before it

    @property
    def unknown_ids(self) -> list[str]:
        return list(getattr(self, "unknown", []))

    @property
    def used_vcpus(self) -> int:
        return sum(a["vcpus"] for a in self.allocations.values())

    @property
    def used_memory_mib(self) -> int:
        return sum(a["memory_mib"] for a in self.allocations.values())

    @property
    def display_status(self) -> str:
        """ready | lost | revoked | cordoned | draining: liveness wins, then the
        scheduling state."""
        if self.status in ("lost", "revoked"):
            return self.status
        return "ready" if self.scheduling == "open" else self.scheduling

    def fits(self, vcpus: int, memory_mib: int) -> bool:
        c = self.capacity
        return (self.status == "ready" and self.scheduling == "open"
                and len(self.allocations) < c["max_sandboxes"]
                and self.used_vcpus + vcpus <= c["vcpus"]
                and self.used_memory_mib + memory_mib <= c["memory_mib"])

    @event("Allocated")
    def allocate(self, sandbox_id: str, org_id: str, vcpus: int, memory_mib: int,
                 kind: str = "sandbox") -> None:
        """`kind` "build": an image build's VM (its id is the image's)."""
        self.allocations[sandbox_id] = {"org_id": org_id, "vcpus": vcpus,
                                        "memory_mib": memory_mib,
                                        **({"kind": kind} if kind != "sandbox" else {})}

    def release(self, sandbox_id: str) -> bool:
        if sandbox_id not in self.allocations:
            return False
        self._released(sandbox_id)
        return True

    @event("Released")
    def _released(self, sandbox_id: str) -> None:
        self.allocations.pop(sandbox_id, None)
        if sandbox_id in self.unknown_ids:
            self.unknown = [x for x in self.unknown if x != sandbox_id]

    @event("Lost")
    def mark_lost(self, envelope: dict[str, Any]) -> None:
        """Its allocations stay, as unknown, until it reports what it runs."""
        self.status = "lost"
        self.unknown = sorted(set(self.unknown_ids) | set(self.allocations))
        self.lost_at = envelope.get("occurred_at")

    @event("Back")
    def mark_back(self) -> None:
        self.status = "ready"

    def settle(self, sandbox_id: str, keep: bool) -> None:
        """An unknown allocation resolved: still held (`keep`) or released."""
        self._settled(sandbox_id=sandbox_id, keep=keep)

    @event("Settled")
    def _settled(self, sandbox_id: str, keep: bool) -> None:
        self.unknown = [x for x in self.unknown_ids if x != sandbox_id]
        if not keep:
            self.allocations.pop(sandbox_id, None)

    @event("Reconciled")
    def reconciled(self, envelope: dict[str, Any]) -> None:
        """HostReconciled: the corrections made against one inventory."""

    @event("Revoked")
    def revoke(self, reason: str) -> None:
        """For good: its credentials are gone (`reason` kept for the record)."""
        self.status = "revoked"
        self.allocations = {}
        self.unknown = []

    # --- administration: idempotent, False when nothing changed -------------
    def cordon(self) -> bool:
        """No new placements; a draining host stays draining."""
        if self.scheduling != "open":
            return False
        self._scheduling_set(state="cordoned")
        return True

    def drain(self) -> bool:
        """Cordon, marked as on its way out (sandboxes leave as they end)."""
        if self.scheduling == "draining":
            return False
        self._scheduling_set(state="draining")
        return True

    def uncordon(self) -> bool:
        if self.scheduling == "open":
            return False
        self._scheduling_set(state="open")
        return True

    @event("SchedulingSet")
    def _scheduling_set(self, state: str) -> None:
        self.scheduling = state


class FactRecord(Aggregate):
    """One stored contract event (a sandbox lost or recovered, a build failed
    with its host), so the relay publishes it."""

    @staticmethod
    def create_id(envelope: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(envelope["event_id"])

    @event("Recorded")
    def __init__(self, envelope: dict[str, Any]):
        self.sandbox_id = envelope.get("sandbox_id") or envelope.get("image_id")


SandboxLostRecord = FactRecord  # the name its stored events were recorded under


def summary(h: Host) -> HostSummary:
    return HostSummary(h.host_id, dict(h.capacity), h.used_vcpus, h.used_memory_mib,
                       len(h.allocations), h.status == "ready" and h.scheduling == "open")
