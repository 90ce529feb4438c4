"""`serve`: topology, metering consumer, outbox relay, period ticker, health."""
from __future__ import annotations

import asyncio
import logging

from common.service import run_until_stopped, serve_health

from ..bootstrap import BillingApp, build, wake_relay_on_save
from ..settings import BillingSettings
from .consumer import METERING, fact_handler, tick

log = logging.getLogger("corral.billing")


async def serve(settings: BillingSettings, stop: asyncio.Event,
                started: asyncio.Event | None = None, app: BillingApp | None = None) -> None:
    app = app or build(settings)
    await app.bus.connect()
    await app.bus.ensure_topology()
    wake_relay_on_save(app)
    log.info("billing metering (period %ss)", settings.billing_period_s)
    if started:
        started.set()

    async def ready() -> bool:
        return app.bus.connected

    jobs = [app.bus.consume(METERING, fact_handler(app.metering), stop),
            app.relay.run(stop), serve_health(settings.health_port, ready, stop, settings.health_host)]
    if settings.billing_period_s > 0:
        jobs.append(tick(app.metering, settings.billing_tick_s, stop))
    async def shutdown() -> None:
        await app.bus.close()
        app.metering.close()

    await run_until_stopped(stop, *jobs, on_stop=shutdown)
