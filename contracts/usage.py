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


class SpendThresholdCrossed(Envelope):
    """An org's month-to-date vCPU-seconds reached a share of its monthly cap:
    80 (a warning) or 100 (creates are refused until the month ends or the cap
    is raised; running sandboxes run on). Once per org, month and level."""

    type: Literal["SpendThresholdCrossed"] = "SpendThresholdCrossed"
    org_id: Id
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$", description="UTC calendar month")
    percent: Literal[80, 100]
    used_vcpu_seconds: float = Field(ge=0)
    cap_vcpu_seconds: float = Field(gt=0)
