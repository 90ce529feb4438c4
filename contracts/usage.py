"""Metering events."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .envelope import Envelope, Id


class UsageRecorded(Envelope):
    """An immutable usage line item. event_id is stable per (sandbox, period),
    or (snapshot, period) for a snapshot's storage (`snapshot_id` set)."""

    type: Literal["UsageRecorded"] = "UsageRecorded"
    org_id: Id
    sandbox_id: Id
    snapshot_id: Id | None = None
    host_id: str | None = None
    period_start: datetime
    period_end: datetime
    vcpu_seconds: float = Field(ge=0)
    memory_mib_seconds: float = Field(ge=0)
    storage_mib_seconds: float = Field(default=0, ge=0)  # snapshots held
