"""`corral.rpc.billing.usage` (core NATS request/reply, queue group `billing`)."""
from __future__ import annotations

import asyncio

from common.rpc import serve
from contracts import rpc
from contracts import subjects as s

from ..bootstrap import BillingContext

QUEUE = "billing"
MAX_REQUEST = 4096


def _refuse(e: Exception) -> rpc.RpcError | None:
    if isinstance(e, ValueError):
        return rpc.RpcError(error="invalid", detail=str(e))
    return None


async def serve_usage_rpc(ctx: BillingContext, stop: asyncio.Event) -> None:
    await serve(ctx.bus.client, {s.RPC_BILLING_USAGE: (rpc.UsageQuery, ctx.usage.page)}, stop,
                max_bytes=MAX_REQUEST, queue=QUEUE, refuse=_refuse)
