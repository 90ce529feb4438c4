"""`python -m services.scheduler`: places sandboxes on heartbeating hosts."""
from __future__ import annotations

import asyncio
import logging

from common.logging import configure_logging
from common.service import install_stop_handlers, run_until_stopped, serve_health
from common.tracing import setup_tracing
from contracts.subjects import CONSUMERS

from .bootstrap import bootstrap
from .entrypoints.rpc import serve_fleet_rpc
from .entrypoints.subscribers import (host_event_handler, placement_handler, sweep_lost_hosts,
                                      watch_heartbeats)
from .settings import SchedulerSettings

log = logging.getLogger("corral.scheduler")


async def main() -> None:
    settings = SchedulerSettings()
    configure_logging("scheduler", settings.log_level)
    setup_tracing("scheduler")
    stop = asyncio.Event()
    install_stop_handlers(stop)
    ctx = await bootstrap(settings)
    by_name = {c.durable: c for c in CONSUMERS}
    log.info("scheduler started")
    await run_until_stopped(
        stop,
        ctx.relay.run(stop),
        ctx.bus.consume(by_name["scheduler-placement"], placement_handler(ctx), stop),
        ctx.bus.consume(by_name["scheduler-hosts"], host_event_handler(ctx), stop),
        watch_heartbeats(ctx, stop),
        sweep_lost_hosts(ctx, stop),
        serve_fleet_rpc(ctx, stop),
        serve_health(settings.health_port, ctx.ready, stop, settings.health_host),
        on_stop=ctx.close,
    )
    log.info("scheduler stopped")


if __name__ == "__main__":
    asyncio.run(main())
