"""Billing administration over request/reply: an org's Stripe customer and the
Stripe push's parked lines."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .rpc import RpcModel

CUSTOMER_ID_PATTERN = r"^cus_[A-Za-z0-9]{1,250}$"
ORG_ID = Field(min_length=1, max_length=64)


class CustomerQuery(RpcModel):
    org_id: str = ORG_ID
    op_id: str = Field(default="-", max_length=64)


class CustomerSet(RpcModel):
    org_id: str = ORG_ID
    stripe_customer_id: str = Field(pattern=CUSTOMER_ID_PATTERN, max_length=254)
    op_id: str = Field(default="-", max_length=64)


class CustomerLink(RpcModel):
    org_id: str
    stripe_customer_id: str | None = Field(description="None: not linked yet")
    source: str | None = Field(default=None, description="created (through Stripe) or admin")
    push_enabled: bool = Field(description="whether this billing pushes usage to Stripe")


class ParkedQuery(RpcModel):
    org_id: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=100, ge=1, le=500)
    op_id: str = Field(default="-", max_length=64)


class ParkedLine(RpcModel):
    identifier: str
    event_id: str
    org_id: str
    meter: str
    value: str
    timestamp: int = Field(description="the usage period's end, epoch seconds")
    reason: str | None
    attempts: int


class MeterTotal(RpcModel):
    meter: str
    state: str
    lines: int
    value: str = Field(description="exact sum of the lines' values (decimal text)")


class ParkedPage(RpcModel):
    items: list[ParkedLine]
    totals: list[MeterTotal] = Field(description="every line, per meter and push state")


class RetryParked(RpcModel):
    identifiers: list[str] | None = Field(default=None, max_length=500,
                                          description="None: every parked line (of org_id)")
    org_id: str | None = Field(default=None, max_length=64)
    op_id: str = Field(default="-", max_length=64)


class RetriedParked(RpcModel):
    retried: int


class SpendQuery(RpcModel):
    org_id: str = ORG_ID
    op_id: str = Field(default="-", max_length=64)


class SpendCapSet(RpcModel):
    org_id: str = ORG_ID
    monthly_vcpu_seconds: float | None = Field(gt=0, le=1e15, description="None: no cap")
    op_id: str = Field(default="-", max_length=64)


class SpendStatus(RpcModel):
    org_id: str
    month: str = Field(description="UTC calendar month, YYYY-MM")
    used_vcpu_seconds: float = Field(description="usage lines of the month recorded so far")
    cap_vcpu_seconds: float | None
    percent: float | None
    level: Literal["none", "ok", "warn", "over"] = Field(
        description="none: no cap; warn: at or past 80%; over: at or past 100%")
