"""`python -m services.host_agent cleanup`: kill every VM this state dir owns
(used when the dev stack stops)."""
from __future__ import annotations

import asyncio
import logging

from common.eventstore import store_env
from common.logging import configure_logging

from ..application.records import VmRecords
from ..bootstrap import make_driver, vm_root
from ..settings import HostAgentSettings

log = logging.getLogger("corral.host_agent")


async def _forget(sandbox_id: str, kind: str, value: str | None) -> None:
    return None


async def cleanup(settings: HostAgentSettings) -> None:
    configure_logging("host_agent", settings.log_level)
    for host_dir in sorted((settings.state_dir / "host").glob("*")):
        records = await asyncio.to_thread(VmRecords, store_env("sqlite", host_dir, "host_agent"))
        driver = await make_driver(settings, host_dir, vm_root(settings, host_dir.name))
        for vm in await asyncio.to_thread(records.all_vms):
            if vm.active:
                await driver.destroy(vm.sandbox_id, dict(vm.resources))
        report = await driver.reconcile({}, _forget)
        log.info("cleanup of %s: killed %d leftovers", host_dir.name,
                 len(report.killed_unrecorded))
        net = getattr(driver, "network", None)
        if net is not None:
            await net.teardown()
        await driver.close()
        records.close()
