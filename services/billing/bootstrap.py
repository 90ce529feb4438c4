"""Wires billing's explicit dependencies: event store, bus, outbox relay, usage
index, and (with a Stripe key) the Stripe push."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay
from contracts.subjects import consumer

from .adapters.stripe_api import StripeApi
from .adapters.usage_index import UsageIndex
from .application.billing_admin import BillingAdmin
from .application.metering import Clock, Metering, utcnow
from .application.spend import Spend
from .application.stripe_push import Customers, StripePush
from .application.usage import UsageQueries
from .domain.stripe_lines import meter_specs
from .settings import BillingSettings


@dataclass
class BillingContext:
    settings: BillingSettings
    metering: Metering
    bus: Bus
    relay: OutboxRelay
    usage: UsageQueries
    admin: BillingAdmin
    push: StripePush | None
    spend: Spend

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
    specs = meter_specs(settings.stripe_meter_vcpu, settings.stripe_meter_memory,
                        settings.stripe_meter_storage)
    index = UsageIndex(settings.store, str((settings.state_dir / "billing-usage.sqlite").resolve()),
                       specs)
    await asyncio.to_thread(index.create)
    customers = Customers(metering)
    push = None
    if settings.stripe_api_key:
        push = StripePush(index.ledger, index,
                          StripeApi(settings.stripe_api_key, settings.stripe_api_base,
                                    settings.stripe_timeout_s),
                          customers, specs, create_customers=settings.stripe_create_customers,
                          backoff_max_s=settings.stripe_backoff_max_s,
                          every_s=settings.stripe_push_every_s,
                          timeout_s=settings.stripe_timeout_s)
    spend = Spend(metering, index)
    return BillingContext(settings, metering, bus, relay, UsageQueries(index, metering, spend),
                          BillingAdmin(customers, index.ledger, push), push, spend)
