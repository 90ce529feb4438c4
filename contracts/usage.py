"""Metering events."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .envelope import Envelope, Id


class UsageRecorded(Envelope):
    """An immutable usage line item. event_id is stable per (sandbox, period)."""

    type: Literal["UsageRecorded"] = "UsageRecorded"
    org_id: Id
    sandbox_id: Id
    host_id: str | None = None
    period_start: datetime
    period_end: datetime
    vcpu_seconds: float = Field(ge=0)
    memory_mib_seconds: float = Field(ge=0)
