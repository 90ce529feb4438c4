"""Placement aggregate: one per sandbox, id derived from the sandbox id.

Creating it twice fails in the store, so no sandbox is ever placed twice,
whatever the number of scheduler instances or redeliveries.
"""
from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

NAMESPACE = uuid.UUID("9a3f6b1e-7c2d-4e8f-b0a1-c2d3e4f5a6b7")


def placement_uuid(sandbox_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"placement/{sandbox_id}")


class Placement(Aggregate):
    @staticmethod
    def create_id(sandbox_id: str, **_: Any) -> uuid.UUID:
        return placement_uuid(sandbox_id)

    @event("Decided")
    def __init__(self, sandbox_id: str, org_id: str, host_id: str | None,
                 envelope: dict[str, Any], spec: dict[str, Any] | None = None,
                 secret_env: bool = False):
        """`envelope` is SandboxScheduled, SandboxFailed or SandboxDestroyed (or
        for an image build, whose id is the image's: ImageBuildScheduled,
        ImageBuildFailed or ImageDeleted).
        `secret_env`: the host fetches the env from the gateway at each start."""
        self.sandbox_id = sandbox_id
        self.org_id = org_id
        self.host_id = host_id
        self.spec = spec or {}
        self.secret_env = secret_env
        self.handled: list[str] = []
        self.status = {"SandboxScheduled": "placed", "SandboxFailed": "failed",
                       "SandboxDestroyed": "cancelled", "ImageBuildScheduled": "placed",
                       "ImageBuildFailed": "failed", "ImageDeleted": "cancelled"
                       }[envelope["type"]]

    @property
    def active(self) -> bool:
        return self.status == "placed"

    @event("Commanded")
    def command(self, envelope: dict[str, Any], intent_id: str | None = None) -> None:
        if intent_id:
            self.handled.append(intent_id)

    @event("Ended")
    def end(self, envelope: dict[str, Any] | None = None, status: str = "ended") -> None:
        self.status = status

    @property
    def lost_since(self) -> str | None:
        """When SandboxLost was recorded for it, once it is no longer held as
        unknown on its host, until it is recovered."""
        return getattr(self, "lost_at", None)

    @event("Lost")
    def mark_lost(self, at: str, envelope: dict[str, Any] | None = None) -> None:
        """Recorded lost at `at`; `envelope`: the SandboxLost to publish, if
        not published already (with its host's loss)."""
        self.lost_at: str | None = at

    @event("Recovered")
    def recovered(self, envelope: dict[str, Any]) -> None:
        self.lost_at = None
