"""Per-org name uniqueness among live sandboxes, as an aggregate per name.

The claim's id is derived from (org, name), so two concurrent creates race on
one row and the store's version check picks exactly one winner.
"""
from __future__ import annotations

import uuid

from eventsourcing.domain import Aggregate, event

from .sandbox import NAMESPACE


def claim_uuid(org_id: str, name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"name/{org_id}/{name}")


class NameClaim(Aggregate):
    @staticmethod
    def create_id(org_id: str, name: str, sandbox_id: str) -> uuid.UUID:
        return claim_uuid(org_id, name)

    @event("Claimed")
    def __init__(self, org_id: str, name: str, sandbox_id: str):
        self.org_id = org_id
        self.name = name
        self.holder: str | None = sandbox_id

    @event("Reclaimed")
    def reclaim(self, sandbox_id: str) -> None:
        self.holder = sandbox_id

    @event("Released")
    def release(self, sandbox_id: str) -> None:
        if self.holder == sandbox_id:
            self.holder = None
