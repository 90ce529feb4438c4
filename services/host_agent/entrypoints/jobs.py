"""What runs in the host agent's process: start-up (reconcile, announce), then
commands, RPC, heartbeats, the outbox relay, template pre-builds and health."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from common.logging import host_id_var
from common.metrics import VMS, refresh_loop
from common.service import serve_health
from contracts.subjects import host_agent_consumer

from ..application.ports import VmmDriver
from ..bootstrap import HostAgentContext
from ..settings import HostAgentSettings, size_classes
from .heartbeat import announce, heartbeat_loop
from .rpc import serve_rpc

log = logging.getLogger("corral.host_agent")


async def startup(ctx: HostAgentContext) -> None:
    """Before any command or request: adopt or clean what the last run left."""
    host_id_var.set(ctx.host_id)
    if ctx.driver.accel == "tcg":
        log.warning("KVM is not usable here: VMs run under TCG software emulation (slow)")
    await ctx.service.reconcile()
    if ctx.service.images is not None:
        await ctx.service.images.recover()
    await announce(ctx)
    log.info("host agent ready", extra={"accel": ctx.driver.accel})


async def prebuild_templates(driver: VmmDriver, settings: HostAgentSettings) -> None:
    """Build the configured classes' templates in the background; never fatal."""
    if not settings.templates:
        return
    for image, vcpus, mem in size_classes(settings.prebuild_templates):
        try:
            if await driver.prepare(image, vcpus, mem):
                log.info("template ready for %s/%d/%d", image, vcpus, mem)
        except Exception:
            log.exception("template build for %s/%d/%d failed", image, vcpus, mem)


def jobs(ctx: HostAgentContext, stop: asyncio.Event) -> list[Awaitable[None]]:
    s = ctx.settings
    return [ctx.relay.run(stop),
            heartbeat_loop(ctx, stop),
            serve_rpc(ctx, stop),
            prebuild_templates(ctx.driver, s),
            ctx.bus.consume(host_agent_consumer(ctx.host_id), ctx.service.handle, stop,
                            concurrency=s.command_concurrency),
            serve_health(s.health_port, ctx.ready, stop, s.health_host),
            refresh_loop(ctx.bus, [host_agent_consumer(ctx.host_id)], [ctx.relay], stop,
                         s.metrics_interval_s, extra=lambda: _vm_gauge(ctx))]


async def _vm_gauge(ctx: HostAgentContext) -> None:
    VMS.set((await asyncio.to_thread(ctx.service.usage))[0])
