"""Prometheus metrics, served at /metrics on each service's health port.

Every process registers what it knows in the default registry (with the
client's process metrics). Gauges that need I/O (consumer lag, relay
backlog, state counts) are refreshed by `refresh_loop`, never at scrape
time: a scrape only formats what is there.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from contracts.subjects import ConsumerDef

    from .bus import Bus
    from .relay import OutboxRelay

log = logging.getLogger("corral.metrics")
CONTENT_TYPE = CONTENT_TYPE_LATEST

CREATE_SECONDS = Histogram(
    "corral_sandbox_create_seconds",
    "From a create request to the sandbox running (first start), by start mode",
    ["start_mode"], buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60, 120))
SANDBOXES = Gauge("corral_sandboxes", "Sandboxes by state (the gateway's read model)",
                  ["state"])
HOST_CAPACITY = Gauge("corral_host_capacity",
                      "A host's capacity (vcpus, memory_mib, sandboxes)", ["host_id", "resource"])
HOST_USED = Gauge("corral_host_used", "What the scheduler has placed on a host, of its capacity",
                  ["host_id", "resource"])
HOSTS = Gauge("corral_hosts", "Hosts by status (the scheduler's view)", ["status"])
CONSUMER_PENDING = Gauge("corral_bus_consumer_pending",
                         "Messages of a durable consumer not yet delivered (lag)",
                         ["stream", "consumer"])
CONSUMER_ACK_PENDING = Gauge("corral_bus_consumer_ack_pending",
                             "Messages delivered to a durable consumer, not yet acknowledged",
                             ["stream", "consumer"])
RELAY_BACKLOG = Gauge("corral_relay_backlog",
                      "Events stored but not yet published by an outbox relay", ["relay"])
RELAY_PUBLISHED = Gauge("corral_relay_published", "Events an outbox relay published since start",
                        ["relay"])
DEAD_LETTERS = Counter("corral_dead_letters_total",
                       "Messages this process dead-lettered (poison, given up, parked)",
                       ["consumer"])
VMS = Gauge("corral_host_vms", "Sandboxes this host agent holds resources for")


def exposition() -> bytes:
    return generate_latest()


async def _consumer_lag(bus: Bus, c: ConsumerDef) -> None:
    info = await asyncio.wait_for(bus.jetstream.consumer_info(c.stream, c.durable), 5)
    CONSUMER_PENDING.labels(c.stream, c.durable).set(info.num_pending or 0)
    CONSUMER_ACK_PENDING.labels(c.stream, c.durable).set(info.num_ack_pending or 0)


async def refresh_loop(bus: Bus, consumers: Sequence[ConsumerDef],
                       relays: Sequence[OutboxRelay], stop: asyncio.Event, interval_s: float,
                       extra: Callable[[], Awaitable[None]] | None = None) -> None:
    """Refresh the gauges that need a round trip, every `interval_s`; a
    failed refresh leaves the last values and is retried on the next pass."""
    for c in consumers:
        DEAD_LETTERS.labels(c.durable)  # shown at 0 before the first one
    while not stop.is_set():
        for c in consumers:
            try:
                await _consumer_lag(bus, c)
            except Exception as e:  # noqa: BLE001 - the bus is down: keep the last value
                log.debug("consumer info %s failed: %r", c.durable, e)
        for r in relays:
            try:
                RELAY_BACKLOG.labels(r.name).set(await asyncio.to_thread(r.backlog))
                RELAY_PUBLISHED.labels(r.name).set(r.published)
            except Exception as e:  # noqa: BLE001 - the store is busy: next pass
                log.debug("relay backlog %s failed: %r", r.name, e)
        if extra is not None:
            try:
                await extra()
            except Exception as e:  # noqa: BLE001 - next pass
                log.debug("metrics refresh failed: %r", e)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
