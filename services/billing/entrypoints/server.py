"""`serve`: topology, metering consumer, outbox relay, period ticker, health."""
from __future__ import annotations

import asyncio
import logging

from common.service import run_until_stopped, serve_health

from ..adapters.usage_index import UsageIndex, index_url
from ..bootstrap import BillingApp, build, wake_relay_on_save
from ..settings import BillingSettings
from .consumer import METERING, fact_handler, tick
from .rpc import project, serve_usage_rpc

log = logging.getLogger("corral.billing")


async def serve(settings: BillingSettings, stop: asyncio.Event,
                started: asyncio.Event | None = None, app: BillingApp | None = None) -> None:
    app = app or build(settings)
    await app.bus.connect()
    await app.bus.ensure_topology()
    wake_relay_on_save(app)
    index = UsageIndex(*index_url(settings.store, str(
        (settings.state_dir / "billing-usage.sqlite").resolve())))
    await asyncio.to_thread(index.create)
    log.info("billing metering (period %ss)", settings.billing_period_s)
    if started:
        started.set()

    async def ready() -> bool:
        return app.bus.connected

    jobs = [app.bus.consume(METERING, fact_handler(app.metering), stop),
            app.relay.run(stop), serve_health(settings.health_port, ready, stop, settings.health_host),
            serve_usage_rpc(index, app.metering, app.bus.nc, stop),
            project(index, app.metering, stop)]
    if settings.billing_period_s > 0:
        jobs.append(tick(app.metering, settings.billing_tick_s, stop))
    async def shutdown() -> None:
        await app.bus.close()
        app.metering.close()
        index.close()

    await run_until_stopped(stop, *jobs, on_stop=shutdown)
