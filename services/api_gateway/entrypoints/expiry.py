"""Durable TTL: a loop over the store-derived read model, so a restart of any
service loses no deadline. Safe with several gateway instances."""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from common.logging import log_context
from common.timefmt import utc_text

from ..bootstrap import GatewayContext

log = logging.getLogger("corral.gateway.expiry")


async def expire_once(ctx: GatewayContext, now: datetime) -> dict[str, int]:
    s = ctx.settings
    done = {"warn": 0, "destroy": 0, "snapshot": 0}
    for sid in await ctx.read_model.due(utc_text(now + timedelta(seconds=s.ttl_warning_s))):
        with log_context(sandbox_id=sid):
            outcome = await asyncio.to_thread(ctx.ledger.expire, sid, now, s.ttl_warning_s)
        if outcome:
            done[outcome] += 1
            log.info("lease %s", "expiring soon" if outcome == "warn" else "expired: destroying",
                     extra={"sandbox_id": sid})
    for snap_id in await ctx.read_model.due_snapshots(utc_text(now)):
        if await asyncio.to_thread(ctx.ledger.expire_snapshot, snap_id, now):
            done["snapshot"] += 1
            log.info("snapshot %s expired: deleting", snap_id)
    return done


async def expiry_loop(ctx: GatewayContext, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await expire_once(ctx, datetime.now(UTC))
        except Exception:
            log.exception("expiry pass failed")
        try:
            await asyncio.wait_for(stop.wait(), ctx.settings.expiry_interval_s)
        except TimeoutError:
            pass
