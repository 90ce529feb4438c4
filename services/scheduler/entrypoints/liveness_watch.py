"""Host liveness: every scheduler instance reads the whole host stream (an
ordered consumer), probes whether that reading keeps up with the stream, and
records a host lost only while it does.

Every `bus_probe_interval_s` the probe writes a BusProbe into the host
stream and notes its sequence. The bus is flowing for this judge when the
probe is stored and the reader has processed the previous probe's sequence:
the stream takes writes and this reader gets them within one interval, even
when no host writes at all. A failed probe, a disconnect, or a reader that
fell behind (a stalled or dead consumer, a starved process) stops every
verdict, and the next flow restarts every host's grace period (see
application/liveness.py). A reader that stays behind while the stream takes
writes is subscribed afresh.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from common.logging import log_context
from contracts import InvalidMessage, parse_message
from contracts.host import BusProbe, HostHeartbeat

from ..application.fleet import Fleet
from ..bootstrap import SchedulerContext

log = logging.getLogger("corral.scheduler")
STREAM = "CORRAL_HOST"
DEFAULT_INTERVAL_S = 2.0  # for a host whose interval this store never recorded
RESUBSCRIBE_AFTER_PROBES = 3


class HostStreamReader:
    """The ordered consumer on the host stream and how far it has read."""

    def __init__(self, ctx: SchedulerContext):
        self.ctx = ctx
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10000)
        self.processed_seq = 0  # stream sequence of the last message handled here
        self.sub: Any = None

    async def subscribe(self) -> None:
        async def on_msg(m: Msg) -> None:
            try:
                self.queue.put_nowait(m)
            except asyncio.QueueFull:
                pass  # the probe sees the reader fall behind

        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:  # noqa: BLE001 - gone with the old connection
                pass
        self.sub = await self.ctx.bus.jetstream.subscribe(
            "corral.evt.host.>", stream=STREAM, cb=on_msg, ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)

    async def run(self, handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event) -> None:
        """Handle every message read, in order, noting how far it got."""
        while not stop.is_set():
            try:
                m = await asyncio.wait_for(self.queue.get(), 0.5)
            except TimeoutError:
                continue
            await handle(m)
            try:
                self.processed_seq = max(self.processed_seq, m.metadata.sequence.stream)
            except Exception:  # noqa: BLE001 - not a JetStream message: no position
                pass

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


def seed_expected_hosts(ctx: SchedulerContext) -> int:
    """Hosts recorded ready are judged from now, heard or not: one that never
    heartbeats again after a scheduler restart is still found lost."""
    n = 0
    for h in Fleet(ctx.app).hosts():
        if h.status == "ready":
            ctx.liveness.expect(h.host_id, h.heartbeat_interval or DEFAULT_INTERVAL_S)
            n += 1
    return n


async def watch_heartbeats(ctx: SchedulerContext, stop: asyncio.Event) -> None:
    reader = HostStreamReader(ctx)
    expected = await asyncio.to_thread(seed_expected_hosts, ctx)
    log.info("expecting %d hosts recorded ready to heartbeat", expected)
    await reader.subscribe()
    probe = asyncio.ensure_future(probe_bus(ctx, reader, stop))
    try:
        await reader.run(lambda m: _handle(ctx, m), stop)
    finally:
        probe.cancel()
        await reader.close()


async def _handle(ctx: SchedulerContext, m: Msg) -> None:
    if not m.subject.endswith(".HostHeartbeat"):
        return  # read for the stream position only
    try:
        hb = parse_message(m.data, subject=m.subject)
    except InvalidMessage as e:
        log.warning("ignored invalid heartbeat: %s", e.reason)
        return
    if not isinstance(hb, HostHeartbeat):
        return
    age = (datetime.now(UTC) - hb.occurred_at).total_seconds()
    if age > hb.interval_s * ctx.settings.missed_heartbeats:
        return  # a stale one: replayed at start-up, or read late after a stall
    with log_context(host_id=hb.host_id):
        was_alive = hb.host_id in ctx.liveness.alive()  # accepted before
        if not was_alive and not await asyncio.to_thread(ctx.app.accepts_heartbeats,
                                                         hb.host_id):
            log.debug("heartbeat of an unregistered or revoked host ignored")
            return
        ctx.liveness.beat(hb.host_id, hb.interval_s)
        await asyncio.to_thread(ctx.app.register, hb)
        if not was_alive:
            log.info("host ready", extra={"accel": hb.accel})


async def probe_bus(ctx: SchedulerContext, reader: HostStreamReader,
                    stop: asyncio.Event) -> None:
    interval = ctx.settings.bus_probe_interval_s
    target: int | None = None  # stream sequence of the previous probe
    behind = 0
    while not stop.is_set():
        seq: int | None = None
        if ctx.bus.connected:
            try:
                seq = await ctx.bus.publish(BusProbe(op_id=f"op_probe_{ctx.settings.instance}"[:64],
                                                     instance=ctx.settings.instance),
                                            timeout_s=max(0.5, interval))
            except Exception as e:  # noqa: BLE001 - JetStream down, or too slow: not flowing
                log.debug("bus probe failed: %r", e)
        if seq is not None and (seq <= reader.processed_seq or (target or 0) >= seq):
            reader.processed_seq, target = 0, None  # the stream was recreated
        caught_up = seq is not None and target is not None and reader.processed_seq >= target
        if ctx.liveness.flowing(caught_up and ctx.bus.connected):
            log.info("bus flowing: every host's grace period starts now")
        elif not caught_up and seq is not None and target is not None:
            behind += 1
            if behind == RESUBSCRIBE_AFTER_PROBES:
                log.warning("host stream reader behind (at %d of %d); subscribing afresh",
                            reader.processed_seq, target)
                try:
                    await reader.subscribe()
                except Exception as e:  # noqa: BLE001 - retried on the next probes
                    log.warning("resubscribe failed: %r", e)
                behind = 0
        if caught_up:
            behind = 0
        target = seq
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


async def sweep_lost_hosts(ctx: SchedulerContext, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for host_id in ctx.liveness.expired():
            timeout = ctx.liveness.timeout_for(host_id)
            op_id = f"op_sweep_{host_id}"[:64]
            with log_context(host_id=host_id, op_id=op_id):
                lost = await asyncio.to_thread(ctx.app.mark_lost, host_id, timeout, op_id)
                ctx.liveness.forget(host_id)
                log.warning("host lost after %.1fs without heartbeats while the bus flowed; "
                            "%d sandboxes lost", timeout, len(lost))
        try:
            await asyncio.wait_for(stop.wait(), ctx.settings.sweep_interval_s)
        except TimeoutError:
            pass
