"""Wires the scheduler's explicit dependencies."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay
from contracts.subjects import consumer

from .application.liveness import Liveness
from .application.scheduler import Scheduler
from .settings import SchedulerSettings


@dataclass
class SchedulerContext:
    settings: SchedulerSettings
    bus: Bus
    app: Scheduler
    relay: OutboxRelay
    liveness: Liveness

    async def ready(self) -> bool:
        return self.bus.connected

    async def close(self) -> None:
        await self.bus.close()
        self.app.close()


async def bootstrap(settings: SchedulerSettings,
                    stop: asyncio.Event | None = None) -> SchedulerContext:
    bus = Bus.of_service(settings, "scheduler", f"scheduler-{settings.instance}")
    await bus.connect()
    await bus.ensure_topology(consumer("scheduler-placement"), consumer("scheduler-hosts"))
    app = await asyncio.to_thread(Scheduler, store_env(settings.store, settings.state_dir,
                                                       "scheduler"))
    app.lost_policy = settings.lost_sandbox_policy
    app.confirm_s = settings.reconcile_confirm_s
    app.missing_grace_s = settings.reconcile_missing_grace_s
    relay = OutboxRelay(app, bus, name="scheduler-relay")
    app.notify_on_save(asyncio.get_running_loop(), relay.wake)
    liveness = Liveness(settings.missed_heartbeats,
                        max_probe_age_s=2 * settings.bus_probe_interval_s + 0.5)
    return SchedulerContext(settings, bus, app, relay, liveness)
