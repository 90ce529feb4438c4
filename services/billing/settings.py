"""Billing service settings (CORRAL_* environment)."""
from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class BillingSettings(CommonSettings):
    # Length of one usage line item for a long run; 0 bills only at run end.
    billing_period_s: int = Field(default=3600, ge=0, le=31 * 86400)
    # A full period is cut this long after it ended, so a late end fact
    # (bus lag) still lands inside the final partial period.
    billing_grace_s: float = Field(default=60, ge=0, le=86400)
    # How often open runs are checked for full periods.
    billing_tick_s: float = Field(default=30, gt=0, le=3600)
