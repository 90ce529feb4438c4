"""Billing service settings (CORRAL_* environment)."""
from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings

METER_NAME = r"^[a-z][a-z0-9_]{0,59}$"  # + the 36-char event id stays within 100


class BillingSettings(CommonSettings):
    # Length of one usage line item for a long run; 0 bills only at run end.
    billing_period_s: int = Field(default=3600, ge=0, le=31 * 86400)
    # A full period is cut this long after it ended, so a late end fact
    # (bus lag) still lands inside the final partial period.
    billing_grace_s: float = Field(default=60, ge=0, le=86400)
    # How often open runs are checked for full periods.
    billing_tick_s: float = Field(default=30, gt=0, le=3600)
    # Stripe: the push is on when a key is set (empty: metering only).
    stripe_api_key: str = Field(default="", repr=False)
    # Another address for the Stripe API (a local stand-in: corral.fake_stripe).
    stripe_api_base: str = Field(default="", max_length=200)
    # Billing Meter event names, one per metered quantity (found, or created).
    stripe_meter_vcpu: str = Field(default="corral_vcpu_seconds", pattern=METER_NAME)
    stripe_meter_memory: str = Field(default="corral_memory_gib_seconds", pattern=METER_NAME)
    stripe_meter_storage: str = Field(default="corral_storage_gib_hours", pattern=METER_NAME)
    # Make a Stripe customer for an org that has none (else its lines park).
    stripe_create_customers: bool = True
    stripe_timeout_s: float = Field(default=10, gt=0, le=120)
    stripe_push_every_s: float = Field(default=2, gt=0, le=600)
    # Retries back off 1, 2, 4 ... s up to this.
    stripe_backoff_max_s: float = Field(default=300, ge=1, le=86400)
