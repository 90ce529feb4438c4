"""`corral.rpc.billing.usage` (core NATS request/reply, queue group `billing`)."""
from __future__ import annotations

import asyncio

from common.rpc import serve
from contracts import billing as bc
from contracts import rpc
from contracts import subjects as s

from ..bootstrap import BillingContext

QUEUE = "billing"
MAX_REQUEST = 64 << 10  # a retry names up to 500 identifiers


def _refuse(e: Exception) -> rpc.RpcError | None:
    if isinstance(e, ValueError):
        return rpc.RpcError(error="invalid", detail=str(e))
    return None


async def serve_usage_rpc(ctx: BillingContext, stop: asyncio.Event) -> None:
    a = ctx.admin

    async def spend_status(q: bc.SpendQuery) -> bc.SpendStatus:
        return await asyncio.to_thread(ctx.spend.status, q.org_id)

    async def set_cap(q: bc.SpendCapSet) -> bc.SpendStatus:
        return await asyncio.to_thread(ctx.spend.set_cap, q.org_id, q.monthly_vcpu_seconds)
    await serve(ctx.bus.client, {
        s.RPC_BILLING_USAGE: (rpc.UsageQuery, ctx.usage.page),
        s.RPC_BILLING_CUSTOMER_GET: (bc.CustomerQuery, a.customer),
        s.RPC_BILLING_CUSTOMER_SET: (bc.CustomerSet, a.set_customer),
        s.RPC_BILLING_PARKED: (bc.ParkedQuery, a.parked),
        s.RPC_BILLING_RETRY: (bc.RetryParked, a.retry),
        s.RPC_BILLING_SPEND: (bc.SpendQuery, spend_status),
        s.RPC_BILLING_SPEND_CAP: (bc.SpendCapSet, set_cap)},
        stop, max_bytes=MAX_REQUEST, queue=QUEUE, refuse=_refuse)
