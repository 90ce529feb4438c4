"""What runs in the scheduler's process: placement and intents, host events,
heartbeats and loss sweeps, fleet RPCs, the outbox relay, health."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from common.service import serve_health
from contracts.subjects import consumer

from ..bootstrap import SchedulerContext
from .rpc import serve_fleet_rpc
from .liveness_watch import sweep_lost_hosts, watch_heartbeats
from .subscribers import host_event_handler, placement_handler


def jobs(ctx: SchedulerContext, stop: asyncio.Event) -> list[Awaitable[None]]:
    s = ctx.settings
    return [ctx.relay.run(stop),
            ctx.bus.consume(consumer("scheduler-placement"), placement_handler(ctx), stop),
            ctx.bus.consume(consumer("scheduler-hosts"), host_event_handler(ctx), stop),
            watch_heartbeats(ctx, stop),
            sweep_lost_hosts(ctx, stop),
            serve_fleet_rpc(ctx, stop),
            serve_health(s.health_port, ctx.ready, stop, s.health_host)]
