"""Wiring: settings -> event store, bus, outbox relay. No I/O here."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay

from .application.metering import Clock, Metering, utcnow
from .settings import BillingSettings


@dataclass
class BillingApp:
    settings: BillingSettings
    metering: Metering
    bus: Bus
    relay: OutboxRelay


def build(settings: BillingSettings, clock: Clock = utcnow) -> BillingApp:
    metering = Metering(env=store_env(settings.store, settings.state_dir, "billing"),
                        period_s=settings.billing_period_s, grace_s=settings.billing_grace_s,
                        clock=clock)
    bus = Bus(settings.nats_url, f"corral-billing-{settings.instance}")
    relay = OutboxRelay(metering, bus, name="billing-outbox")
    return BillingApp(settings, metering, bus, relay)


def wake_relay_on_save(app: BillingApp) -> None:
    """Saves happen in worker threads; wake the relay on the loop's thread."""
    loop = asyncio.get_running_loop()
    app.metering.on_saved = lambda: loop.call_soon_threadsafe(app.relay.wake)
