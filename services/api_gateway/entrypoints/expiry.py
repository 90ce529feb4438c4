"""Durable TTL: a loop over the store-derived read model, so a restart of any
service loses no deadline. Safe with several gateway instances."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from common.logging import log_context

from ..domain.sandbox import iso

log = logging.getLogger("corral.gateway.expiry")


async def expire_once(ctx, now: datetime) -> dict[str, int]:  # noqa: ANN001
    s = ctx.settings
    done = {"warn": 0, "destroy": 0}
    for sid in await ctx.read_model.due(iso(now + timedelta(seconds=s.ttl_warning_s))):
        with log_context(sandbox_id=sid):
            outcome = await asyncio.to_thread(ctx.ledger.expire, sid, now, s.ttl_warning_s)
        if outcome:
            done[outcome] += 1
            log.info("lease %s", "expiring soon" if outcome == "warn" else "expired: destroying",
                     extra={"sandbox_id": sid})
    return done


async def expiry_loop(ctx, stop: asyncio.Event) -> None:  # noqa: ANN001
    while not stop.is_set():
        try:
            await expire_once(ctx, datetime.now(timezone.utc))
        except Exception:  # noqa: BLE001 - store hiccup: next pass retries
            log.exception("expiry pass failed")
        try:
            await asyncio.wait_for(stop.wait(), ctx.settings.expiry_interval_s)
        except asyncio.TimeoutError:
            pass
