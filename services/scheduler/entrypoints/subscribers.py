"""Bus handlers: placement, intents, host reports, host events and inventories."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from common.bus import Handler, Poison, Retry
from common.logging import log_context
from contracts import Envelope
from contracts.image import ImageBuildRequested, ImageDeleteRequested, ImageEvent
from contracts.host import HostInventory, HostRegistered, HostRevoked
from contracts.sandbox import SandboxEvent, SandboxRequested
from contracts.snapshot import SnapshotEvent

from ..application.builds import NoCapacity, WrongSource
from ..application.scheduler import INTENT_COMMANDS
from ..bootstrap import SchedulerContext

log = logging.getLogger("corral.scheduler")
INVENTORY_MAX_AGE_S = 120.0  # an older one (read after an outage) may predate facts since


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
        elif isinstance(msg, HostInventory):  # its subject (the host's own) names the host
            age = (datetime.now(UTC) - msg.occurred_at).total_seconds()
            if age > INVENTORY_MAX_AGE_S:
                log.info("stale inventory ignored (%.0fs old)", age)
                return
            with log_context(host_id=msg.host_id, op_id=msg.op_id):
                await asyncio.to_thread(ctx.app.reconcile, msg)
    return handle
