"""What runs in billing's process: the metering consumer, the outbox relay,
the period ticker, the usage projection and RPC, the Stripe push, health."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from common.metrics import refresh_loop
from common.service import serve_health
from contracts.subjects import consumer

from ..bootstrap import BillingContext
from .consumer import fact_handler, tick
from .rpc import serve_usage_rpc

log = logging.getLogger("corral.billing")


def jobs(ctx: BillingContext, stop: asyncio.Event) -> list[Awaitable[None]]:
    s = ctx.settings
    log.info("billing metering (period %ss)", s.billing_period_s)
    metering = consumer("billing-metering")
    out: list[Awaitable[None]] = [
        ctx.bus.consume(metering, fact_handler(ctx.metering), stop), ctx.relay.run(stop),
        serve_health(s.health_port, ctx.ready, stop, s.health_host),
        refresh_loop(ctx.bus, [metering], [ctx.relay], stop, s.metrics_interval_s),
        serve_usage_rpc(ctx, stop), ctx.usage.project(stop)]
    if s.billing_period_s > 0:
        out.append(tick(ctx.metering, s.billing_tick_s, stop))
    if ctx.push is not None:
        out.append(ctx.push.run(stop))
    else:
        log.info("Stripe push off (no CORRAL_STRIPE_API_KEY): metering only; "
                 "usage lines stay pending for Stripe")
    return out
