"""Usage line items of the caller's org (org key), from the billing service."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from contracts.billing import SpendStatus
from contracts.rpc import UsagePage, UsageQuery

from .deps import Ctx, OpId, Org
from .params import ISO, parse_when

usage_router = APIRouter(tags=["usage"])
DEFAULT_RANGE = timedelta(days=30)


@usage_router.get("/v1/usage", response_model=UsagePage)
async def usage(
    ctx: Ctx, oid: OpId, org: Org,
    from_: Annotated[str | None, Query(
        alias="from", pattern=ISO,
        description="inclusive start (ISO 8601 with offset); default: `to` - 30 days")] = None,
    to: Annotated[str | None, Query(
        pattern=ISO, description="exclusive end (ISO 8601 with offset); default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> UsagePage:
    """Per-sandbox, per-period line items overlapping [from, to), oldest first: the same
    records pushed to the payment provider (`event_id` is their idempotency key). The
    range may span at most 400 days."""
    try:
        end = parse_when(to, "to") or datetime.now(UTC)
        start = parse_when(from_, "from") or end - DEFAULT_RANGE
        q = UsageQuery.model_validate({"org_id": org.org_id, "from": start, "to": end,
                                       "limit": limit, "cursor": cursor, "op_id": oid})
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", *err.get("loc", ()))}
                                      for err in e.errors(include_url=False)]) from None
    return await ctx.billing.usage(q)


@usage_router.get("/v1/spend", response_model=SpendStatus)
async def spend(ctx: Ctx, org: Org) -> SpendStatus:
    """The caller's org: this month's vCPU-seconds so far (its usage lines), against
    its monthly cap if an admin set one."""
    return await ctx.billing.spend_of(org.org_id)
