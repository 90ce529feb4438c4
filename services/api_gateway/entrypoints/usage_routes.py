"""Usage line items of the caller's org (org key), from the billing service."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from contracts.rpc import UsagePage, UsageQuery

from .deps import Ctx, OpId, Org

usage_router = APIRouter(tags=["usage"])
# ISO 8601 with an offset, as text: a bare number is not a time here.
ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$"
DEFAULT_RANGE = timedelta(days=30)


def _when(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestValidationError([{"loc": ("query", name), "msg": "not a valid time",
                                       "type": "datetime_parsing"}]) from None


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
        end = _when(to, "to") or datetime.now(UTC)
        start = _when(from_, "from") or end - DEFAULT_RANGE
        q = UsageQuery.model_validate({"org_id": org.org_id, "from": start, "to": end,
                                       "limit": limit, "cursor": cursor, "op_id": oid})
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", *err.get("loc", ()))}
                                      for err in e.errors(include_url=False)]) from None
    return await ctx.billing.usage(q)
