"""What runs in the scheduler's process: placement and intents, host events,
heartbeats and loss sweeps, fleet RPCs, the outbox relay, health."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from common.metrics import HOST_CAPACITY, HOST_USED, HOSTS, refresh_loop
from common.service import serve_health
from contracts.subjects import consumer

from ..application.fleet import Fleet
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
            serve_health(s.health_port, ctx.ready, stop, s.health_host),
            refresh_loop(ctx.bus, [consumer("scheduler-placement"), consumer("scheduler-hosts")],
                         [ctx.relay], stop, s.metrics_interval_s,
                         extra=lambda: _fleet_gauges(ctx))]


async def _fleet_gauges(ctx: SchedulerContext) -> None:
    hosts = await asyncio.to_thread(lambda: Fleet(ctx.app).hosts())
    HOST_CAPACITY.clear()
    HOST_USED.clear()
    by_status = dict.fromkeys(("ready", "lost", "revoked", "cordoned", "draining"), 0)
    for h in hosts:
        by_status[h.display_status] = by_status.get(h.display_status, 0) + 1
        if h.status == "revoked":
            continue
        cap = h.capacity
        for resource, total, used in (
                ("vcpus", cap["vcpus"], h.used_vcpus),
                ("memory_mib", cap["memory_mib"], h.used_memory_mib),
                ("sandboxes", cap["max_sandboxes"], len(h.allocations))):
            HOST_CAPACITY.labels(h.host_id, resource).set(total)
            HOST_USED.labels(h.host_id, resource).set(used)
    for status, n in by_status.items():
        HOSTS.labels(status).set(n)
