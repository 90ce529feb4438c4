"""Folds sandbox facts from the bus into the gateway's Sandbox aggregates."""
from __future__ import annotations

import asyncio
import logging

from common.bus import Handler, Poison, Retry
from contracts import Envelope
from contracts.image import ImageEvent

from ..application.errors import NotFound, OutOfOrder
from ..bootstrap import GatewayContext

log = logging.getLogger("corral.gateway.ingest")


def ingest_handler(ctx: GatewayContext) -> Handler:
    async def handle(msg: Envelope) -> None:
        try:
            changed = await asyncio.to_thread(ctx.ledger.ingest, msg)
        except ValueError as e:
            raise Poison(str(e)) from None
        except OutOfOrder as e:
            raise Retry(str(e), delay_s=0.5) from None
        except NotFound:
            raise  # not yet visible (another instance's write): retried, then dead-lettered
        if changed:
            log.info("sandbox fact %s folded in", msg.type,
                     extra={"stage": f"folded:{msg.type}"})
        if isinstance(msg, ImageEvent):
            if changed:
                await ctx.images.folded(msg)
            return
        ctx.waiters.notify(getattr(msg, "sandbox_id", ""))
    return handle
