"""Billing administration (admin key), answered by the billing service: an
org's Stripe customer, and usage lines Stripe would not take (parked)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from contracts import billing as bc

from .deps import Admin, Ctx, OpId

billing_router = APIRouter(tags=["admin"])
OrgPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stripe_customer_id: str = Field(pattern=bc.CUSTOMER_ID_PATTERN, max_length=254)


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identifiers: list[Annotated[str, Field(max_length=100)]] | None = Field(
        default=None, max_length=500, description="None: every parked line (of org_id)")
    org_id: str | None = Field(default=None, max_length=64)


@billing_router.get("/v1/orgs/{org_id}/billing", response_model=bc.CustomerLink)
async def get_billing(ctx: Ctx, oid: OpId, org_id: OrgPath, _: Admin) -> bc.CustomerLink:
    """The org's Stripe customer (None until made or set) and whether the push is on."""
    return await ctx.billing.customer(bc.CustomerQuery(org_id=org_id, op_id=oid))


@billing_router.put("/v1/orgs/{org_id}/billing", response_model=bc.CustomerLink)
async def set_billing(ctx: Ctx, oid: OpId, org_id: OrgPath, body: CustomerIn,
                      _: Admin) -> bc.CustomerLink:
    """Link the org to an existing Stripe customer; lines not yet sent go to it."""
    return await ctx.billing.set_customer(bc.CustomerSet(
        org_id=org_id, stripe_customer_id=body.stripe_customer_id, op_id=oid))


@billing_router.get("/v1/admin/billing/parked", response_model=bc.ParkedPage)
async def parked(ctx: Ctx, oid: OpId, _: Admin,
                 org_id: Annotated[str | None, Query(max_length=64)] = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 100) -> bc.ParkedPage:
    """Meter events Stripe refused for good, with its reason, and totals per meter
    and push state (to reconcile with Stripe's own)."""
    return await ctx.billing.parked(bc.ParkedQuery(org_id=org_id, limit=limit, op_id=oid))


@billing_router.post("/v1/admin/billing/parked/retry", response_model=bc.RetriedParked)
async def retry_parked(ctx: Ctx, oid: OpId, body: RetryIn, _: Admin) -> bc.RetriedParked:
    """Parked lines (these, or all) back to pending: sent on the next pass."""
    return await ctx.billing.retry_parked(bc.RetryParked(
        identifiers=body.identifiers, org_id=body.org_id, op_id=oid))


class SpendCapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    monthly_vcpu_seconds: float | None = Field(gt=0, le=1e15, description="None: no cap")


@billing_router.put("/v1/orgs/{org_id}/spend-cap", response_model=bc.SpendStatus)
async def set_spend_cap(ctx: Ctx, oid: OpId, org_id: OrgPath, body: SpendCapIn,
                        _: Admin) -> bc.SpendStatus:
    """The org's monthly vCPU-seconds cap (UTC months): at 80% creates carry a
    `Corral-Spend-Warning` header and an event is published, at 100% creates
    get 402; running sandboxes keep running until their TTL."""
    out = await ctx.billing.set_spend_cap(bc.SpendCapSet(
        org_id=org_id, monthly_vcpu_seconds=body.monthly_vcpu_seconds, op_id=oid))
    if ctx.sandboxes.spend is not None:
        ctx.sandboxes.spend.forget(org_id)
    return out


@billing_router.get("/v1/orgs/{org_id}/spend", response_model=bc.SpendStatus)
async def org_spend(ctx: Ctx, oid: OpId, org_id: OrgPath, _: Admin) -> bc.SpendStatus:
    return await ctx.billing.spend_of(org_id)
