"""Registration announcement, periodic heartbeats and inventories."""
from __future__ import annotations

import asyncio
import logging
import secrets

from contracts.host import (MAX_INVENTORY, HostCapacity, HostHeartbeat, HostInventory,
                           HostRegistered, InventoryItem)
from contracts.subjects import host_agent_consumer

from ..application.ports import VmmDriver
from ..bootstrap import HostAgentContext
from ..settings import HostAgentSettings

log = logging.getLogger("corral.host_agent")
VERSION = "0.1.0"


def _capacity(s: HostAgentSettings) -> HostCapacity:
    return HostCapacity(vcpus=s.capacity_vcpus, memory_mib=s.capacity_memory_mib,
                        max_sandboxes=s.max_sandboxes)


def _op() -> str:
    return "op_" + secrets.token_hex(10)


async def announce(ctx: HostAgentContext) -> None:
    await ctx.bus.publish(HostRegistered(
        op_id=_op(), host_id=ctx.host_id, hostname=ctx.settings.hostname,
        capacity=_capacity(ctx.settings), accel=ctx.driver.accel, agent_version=VERSION))


def pool_stats(driver: VmmDriver) -> dict[str, dict[str, int]]:
    return {str(k): {f: int(v) for f, v in d.items() if isinstance(v, (int, float))}
            for k, d in driver.pool_stats().items()}


def warnings(ctx: HostAgentContext) -> list[str]:
    accel = ctx.driver.accel
    if accel == "tcg":
        return ["accel=tcg: KVM unusable on this host, VMs run under slow software emulation"]
    if accel == "fake":
        return ["driver=fake: sandboxes are not VMs (test driver)"]
    return []


async def commands_pending(ctx: HostAgentContext) -> int | None:
    """Commands not yet delivered to this agent (None: cannot tell)."""
    try:
        info = await asyncio.wait_for(ctx.bus.jetstream.consumer_info(
            "CORRAL_HOSTCMD", host_agent_consumer(ctx.host_id).durable), 2.0)
        return int(info.num_pending or 0)
    except Exception as e:  # noqa: BLE001 - the inventory says it does not know
        log.debug("command consumer info failed: %r", e)
        return None


async def publish_inventory(ctx: HostAgentContext) -> None:
    """What this host holds resources for (raises when the bus is down). The
    pending count is read first: what it counts as delivered had reached this
    agent before the snapshot (the scheduler still confirms an absence over
    two inventories: a delivered start may not be accepted yet)."""
    pending = await commands_pending(ctx)
    held = await asyncio.to_thread(ctx.service.records.inventory)
    if len(held) > MAX_INVENTORY:
        log.error("%d VMs: the inventory names only %d", len(held), MAX_INVENTORY)
    builds = ctx.service.images.building() if ctx.service.images is not None else []
    await ctx.bus.publish(HostInventory(
        op_id=_op(), host_id=ctx.host_id, builds=builds[:256], commands_pending=pending,
        sandboxes=[InventoryItem(sandbox_id=sid, org_id=org, state=state)
                   for sid, org, state in held[:MAX_INVENTORY]]))


async def heartbeat_loop(ctx: HostAgentContext, stop: asyncio.Event) -> None:
    """Heartbeats every interval, each given one interval to be stored (a
    late heartbeat is worthless, and one stuck in a bus outage must not hold
    back the next); the inventory every inventory interval and again as soon
    as a heartbeat is stored after one failed (the bus is back), sent beside
    the heartbeats so that a large or slow one never delays them."""
    seq = 0
    interval = ctx.settings.heartbeat_interval_s
    inventory_due = 0.0  # monotonic time of the next inventory: at once
    inventory: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()

    async def send_inventory() -> None:
        nonlocal inventory_due
        try:
            await publish_inventory(ctx)
        except Exception as e:  # noqa: BLE001 - sent again after the next heartbeat
            log.warning("inventory failed: %r", e)
            inventory_due = 0.0

    try:
        while not stop.is_set():
            running, vcpus, mem = await asyncio.to_thread(ctx.service.usage)
            try:
                await ctx.bus.publish(HostHeartbeat(
                    op_id=_op(), host_id=ctx.host_id, seq=seq, accel=ctx.driver.accel,
                    capacity=_capacity(ctx.settings), running=running, used_vcpus=vcpus,
                    used_memory_mib=mem, warnings=warnings(ctx), interval_s=interval,
                    pools=pool_stats(ctx.driver)), timeout_s=interval)
                seq += 1
                if loop.time() >= inventory_due and (inventory is None or inventory.done()):
                    inventory_due = loop.time() + ctx.settings.inventory_interval_s
                    inventory = asyncio.ensure_future(send_inventory())
            except Exception as e:  # noqa: BLE001 - bus down: keep beating when it is back
                log.warning("heartbeat failed: %r", e)
                inventory_due = 0.0
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
    finally:
        if inventory is not None:
            inventory.cancel()
