"""Bus handlers: sandbox facts in, usage out (through the store's outbox)."""
from __future__ import annotations

import asyncio
import logging

from common.bus import Handler, Poison, Retry
from contracts import Envelope

from ..application.metering import Metering
from ..domain.meter import NotPlacedYet, OrgMismatch, WrongSource

log = logging.getLogger("corral.billing")


def fact_handler(app: Metering) -> Handler:
    async def handle(msg: Envelope) -> None:
        try:
            await asyncio.to_thread(app.observe, msg)
        except (OrgMismatch, WrongSource) as e:
            raise Poison(str(e)) from None
        except NotPlacedYet as e:
            raise Retry(str(e), delay_s=0.5) from None
    return handle


async def tick(app: Metering, every_s: float, stop: asyncio.Event) -> None:
    """Cut full periods of long runs; a failed pass is retried next tick."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(app.cut_due)
        except Exception:
            log.exception("periodic usage cut failed")
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
