"""Usage line items of the caller's org (org key), from the billing service."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, ValidationError

from common.rpc import request as rpc
from contracts import subjects
from contracts.rpc import Principal, UsagePage, UsageQuery

from .deps import op_id, org_principal

usage_router = APIRouter(tags=["usage"])
DEFAULT_RANGE = timedelta(days=30)
TIMEOUT_S = 10.0
MAX_REPLY = 512 * 1024


@usage_router.get("/v1/usage", response_model=UsagePage)
async def usage(
    request: Request, p: Annotated[Principal, Depends(org_principal)],
    from_: Annotated[AwareDatetime | None, Query(
        alias="from", description="inclusive start (ISO 8601 with offset); default: `to` - 30 days")] = None,
    to: Annotated[AwareDatetime | None, Query(
        description="exclusive end (ISO 8601 with offset); default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> UsagePage:
    """Per-sandbox, per-period line items overlapping [from, to), oldest first: the same
    records pushed to the payment provider (`event_id` is their idempotency key). The
    range may span at most 400 days."""
    end = to or datetime.now(timezone.utc)
    start = from_ or end - DEFAULT_RANGE
    try:
        q = UsageQuery(org_id=p.org_id, from_=start, to=end, limit=limit, cursor=cursor,
                       op_id=op_id(request))
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", *err.get("loc", ()))}
                                      for err in e.errors(include_url=False)]) from None
    return await rpc(request.app.state.ctx.bus.nc, subjects.RPC_BILLING_USAGE, q, UsagePage,
                     timeout=TIMEOUT_S, max_bytes=MAX_REPLY)
