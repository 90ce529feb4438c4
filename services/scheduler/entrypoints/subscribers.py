"""Bus handlers: placement, intents, host reports, heartbeats, loss sweeps."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from common.bus import Handler, Poison, Retry
from common.logging import log_context
from contracts import Envelope, InvalidMessage, parse_message
from contracts.image import ImageBuildRequested, ImageDeleteRequested, ImageEvent
from contracts.host import HostHeartbeat, HostRegistered, HostRevoked
from contracts.sandbox import SandboxEvent, SandboxRequested
from contracts.snapshot import SnapshotEvent

from ..application.builds import NoCapacity, WrongSource
from ..application.scheduler import INTENT_COMMANDS
from ..bootstrap import SchedulerContext

log = logging.getLogger("corral.scheduler")


def placement_handler(ctx: SchedulerContext) -> Handler:
    async def handle(msg: Envelope) -> None:
        app = ctx.app
        if isinstance(msg, SandboxRequested):
            placed = await _place(ctx, msg, app.place, app.fail)
            if placed is None:
                return
            p, new = placed
            if new:
                log.info("placed on %s", p.host_id, extra={"host_id": p.host_id,
                                                           "stage": "placed"})
            else:
                log.info("already decided (%s); duplicate ignored", p.status)
        elif msg.type in INTENT_COMMANDS and isinstance(msg, SandboxEvent):
            await asyncio.to_thread(app.route_intent, msg)
        elif msg.type in ("SnapshotRequested", "SnapshotDeleteRequested") and \
                isinstance(msg, SnapshotEvent):
            await asyncio.to_thread(app.route_snapshot, msg)
        elif msg.type in ("SandboxDestroyed", "SandboxFailed", "SandboxStopped") and \
                isinstance(msg, SandboxEvent):
            try:
                await asyncio.to_thread(app.host_reported, msg)
            except WrongSource as e:
                raise Poison(str(e)) from None
        elif isinstance(msg, ImageEvent):
            await _image(ctx, msg)
    return handle


async def _place(ctx: SchedulerContext, msg: Any, place: Callable[..., Any],
                 fail: Callable[..., Any]) -> Any:
    """`place(msg, alive)` (a sandbox or a build): while nothing fits, retried
    until the request is `placement_timeout_s` old, then `fail`ed (None)."""
    try:
        return await asyncio.to_thread(place, msg, ctx.liveness.alive())
    except NoCapacity as e:
        age = (datetime.now(UTC) - msg.occurred_at).total_seconds()
        if age < ctx.settings.placement_timeout_s:
            raise Retry(str(e), delay_s=1.0) from None
        await asyncio.to_thread(fail, msg, "no_capacity", str(e))
        log.warning("placement of %s failed: %s", msg.type, e)
        return None


async def _image(ctx: SchedulerContext, msg: ImageEvent) -> None:
    app = ctx.app
    if isinstance(msg, ImageBuildRequested):
        placed = await _place(ctx, msg, app.place_build, app.fail_build)
        if placed is None:
            return
        p, new = placed
        if new:
            log.info("build placed on %s", p.host_id, extra={"host_id": p.host_id})
    elif isinstance(msg, ImageDeleteRequested):
        await asyncio.to_thread(app.route_image_delete, msg)
    elif msg.type in ("ImageBuilt", "ImageBuildFailed"):
        try:
            await asyncio.to_thread(app.build_reported, msg)
        except WrongSource as e:
            raise Poison(str(e)) from None


def host_event_handler(ctx: SchedulerContext) -> Handler:
    async def handle(msg: Envelope) -> None:
        if isinstance(msg, HostRegistered):
            await asyncio.to_thread(ctx.app.register, msg)
        elif isinstance(msg, HostRevoked):
            lost = await asyncio.to_thread(ctx.app.revoke, msg)
            ctx.liveness.forget(msg.host_id)
            log.warning("host revoked; %d sandboxes lost", len(lost))
    return handle


async def watch_heartbeats(ctx: SchedulerContext, stop: asyncio.Event) -> None:
    """Every scheduler instance sees every heartbeat (ordered, ephemeral)."""
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10000)

    async def on_msg(m: Msg) -> None:
        try:
            queue.put_nowait(m)
        except asyncio.QueueFull:
            pass

    sub = await ctx.bus.jetstream.subscribe(
        "corral.evt.host.*.HostHeartbeat", stream="CORRAL_HOST", cb=on_msg,
        ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    try:
        while not stop.is_set():
            try:
                m = await asyncio.wait_for(queue.get(), 0.5)
            except TimeoutError:
                continue
            try:
                hb = parse_message(m.data, subject=m.subject)
            except InvalidMessage as e:
                log.warning("ignored invalid heartbeat: %s", e.reason)
                continue
            if not isinstance(hb, HostHeartbeat):
                continue
            age = (datetime.now(UTC) - hb.occurred_at).total_seconds()
            if age > hb.interval_s * ctx.settings.missed_heartbeats:
                continue  # a stale one replayed at start-up
            with log_context(host_id=hb.host_id):
                was_alive = hb.host_id in ctx.liveness.alive()  # accepted before
                if not was_alive and not await asyncio.to_thread(ctx.app.accepts_heartbeats,
                                                                 hb.host_id):
                    log.debug("heartbeat of an unregistered or revoked host ignored")
                    continue
                ctx.liveness.beat(hb.host_id, hb.interval_s)
                await asyncio.to_thread(ctx.app.register, hb)
                if not was_alive:
                    log.info("host ready", extra={"accel": hb.accel})
    finally:
        await sub.unsubscribe()


async def sweep_lost_hosts(ctx: SchedulerContext, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for host_id in ctx.liveness.expired():
            timeout = ctx.liveness.timeout_for(host_id)
            with log_context(host_id=host_id, op_id=f"op_sweep_{host_id}"[:64]):
                lost = await asyncio.to_thread(ctx.app.mark_lost, host_id, timeout,
                                               f"op_sweep_{host_id}"[:64])
                ctx.liveness.forget(host_id)
                log.warning("host lost after %.1fs without heartbeats; %d sandboxes lost",
                            timeout, len(lost))
        try:
            await asyncio.wait_for(stop.wait(), ctx.settings.sweep_interval_s)
        except TimeoutError:
            pass
