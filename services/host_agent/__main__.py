"""`python -m services.host_agent`: runs this host's sandboxes."""
from __future__ import annotations

import asyncio
import logging
import sys

from common.logging import configure_logging, host_id_var
from common.service import install_stop_handlers, run_until_stopped, serve_health
from common.tracing import setup_tracing
from contracts.subjects import host_agent_consumer

from common.eventstore import store_env

from .application.records import VmRecords
from .bootstrap import bootstrap, make_driver, prebuild_templates, vm_root
from .entrypoints.heartbeat import announce, heartbeat_loop
from .entrypoints.rpc import serve_rpc
from .settings import HostAgentSettings

log = logging.getLogger("corral.host_agent")


async def main() -> None:
    settings = HostAgentSettings()
    configure_logging("host_agent", settings.log_level)
    setup_tracing("host_agent")
    stop = asyncio.Event()
    install_stop_handlers(stop)
    ctx = await bootstrap(settings, stop)
    host_id_var.set(ctx.host_id)
    if ctx.driver.accel == "tcg":
        log.warning("KVM is not usable here: VMs run under TCG software emulation (slow)")
    await ctx.service.reconcile()
    await announce(ctx)
    log.info("host agent ready", extra={"accel": ctx.driver.accel})
    await run_until_stopped(
        stop,
        ctx.relay.run(stop),
        heartbeat_loop(ctx, stop),
        serve_rpc(ctx, stop),
        prebuild_templates(ctx.driver, settings),
        ctx.bus.consume(host_agent_consumer(ctx.host_id), ctx.service.handle, stop,
                        concurrency=settings.command_concurrency),
        serve_health(settings.health_port, ctx.ready, stop, settings.health_host),
        on_stop=ctx.close,
    )
    log.info("host agent stopped")


async def cleanup() -> None:
    """Kill every VM this state dir owns (used when the dev stack stops)."""
    settings = HostAgentSettings()
    configure_logging("host_agent", settings.log_level)
    for host_dir in sorted((settings.state_dir / "host").glob("*")):
        records = await asyncio.to_thread(VmRecords, store_env("sqlite", host_dir, "host_agent"))
        driver = await make_driver(settings, host_dir, vm_root(settings, host_dir.name))
        for vm in await asyncio.to_thread(records.all_vms):
            if vm.active:
                await driver.destroy(vm.sandbox_id, dict(vm.resources))
        report = await driver.reconcile({}, lambda *a: asyncio.sleep(0))
        log.info("cleanup of %s: killed %d leftovers", host_dir.name,
                 len(report.killed_unrecorded))
        net = getattr(driver, "network", None)
        if net is not None:
            await net.teardown()
        await driver.close()
        records.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup"]:
        asyncio.run(cleanup())
    else:
        asyncio.run(main())
