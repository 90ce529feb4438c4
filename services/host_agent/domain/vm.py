"""Vm aggregate: what this host runs for one sandbox, and every kernel
object it owns, recorded the moment it exists."""
from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

NAMESPACE = uuid.UUID("c3e1f0a2-6b4d-4c8e-9f0a-1b2c3d4e5f60")
ACTIVE = ("starting", "running", "paused", "stopping")


def vm_uuid(sandbox_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"vm/{sandbox_id}")


class Vm(Aggregate):
    @staticmethod
    def create_id(sandbox_id: str, **_: Any) -> uuid.UUID:
        return vm_uuid(sandbox_id)

    @event("Accepted")
    def __init__(self, sandbox_id: str, org_id: str, spec: dict[str, Any],
                 envelope: dict[str, Any]):
        """`envelope` is the SandboxStarting fact."""
        self.sandbox_id = sandbox_id
        self.org_id = org_id
        self.spec = spec
        self.starting = envelope
        self.state = "starting"
        self.resources: dict[str, str] = {}
        self.snapshots: dict[str, str] = {}  # snapshot id -> last fact about it

    @event("Resource")
    def record_resource(self, kind: str, value: str | None) -> None:
        if value is None:
            self.resources.pop(kind, None)
        else:
            self.resources[kind] = value

    @event("Transition")
    def transition(self, state: str, envelope: dict[str, Any] | None = None) -> None:
        self.state = state
        if state == "starting" and envelope is not None:
            self.starting = envelope  # a restart: its ids, for the facts that follow

    @event("Noted")
    def note(self, envelope: dict[str, Any]) -> None:
        """A fact about this VM that changes no state (snapshots taken of it)."""
        if envelope["type"].startswith("Snapshot"):
            self.snapshots[envelope["snapshot_id"]] = envelope["type"]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE
