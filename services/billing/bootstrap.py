"""Wires billing's explicit dependencies: event store, bus, outbox relay, usage index."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay
from contracts.subjects import consumer

from .adapters.usage_index import UsageIndex
from .application.metering import Clock, Metering, utcnow
from .application.usage import UsageQueries
from .settings import BillingSettings


@dataclass
class BillingContext:
    settings: BillingSettings
    metering: Metering
    bus: Bus
    relay: OutboxRelay
    usage: UsageQueries

    async def ready(self) -> bool:
        return self.bus.connected

    async def close(self) -> None:
        await self.bus.close()
        self.metering.close()
        self.usage.index.close()


async def bootstrap(settings: BillingSettings, stop: asyncio.Event | None = None,
                    clock: Clock = utcnow) -> BillingContext:
    metering = await asyncio.to_thread(
        Metering, env=store_env(settings.store, settings.state_dir, "billing"),
        period_s=settings.billing_period_s, grace_s=settings.billing_grace_s, clock=clock)
    bus = Bus.of_service(settings, "billing", f"corral-billing-{settings.instance}")
    await bus.connect()
    await bus.ensure_topology(consumer("billing-metering"))
    relay = OutboxRelay(metering, bus, name="billing-outbox")
    metering.notify_on_save(asyncio.get_running_loop(), relay.wake)
    index = UsageIndex(settings.store, str((settings.state_dir / "billing-usage.sqlite").resolve()))
    await asyncio.to_thread(index.create)
    return BillingContext(settings, metering, bus, relay, UsageQueries(index, metering))
