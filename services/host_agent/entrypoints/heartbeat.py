"""Registration announcement and periodic heartbeats."""
from __future__ import annotations

import asyncio
import logging
import secrets

from contracts.host import HostCapacity, HostHeartbeat, HostRegistered

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


async def heartbeat_loop(ctx: HostAgentContext, stop: asyncio.Event) -> None:
    seq = 0
    interval = ctx.settings.heartbeat_interval_s
    while not stop.is_set():
        running, vcpus, mem = await asyncio.to_thread(ctx.service.usage)
        try:
            await ctx.bus.publish(HostHeartbeat(
                op_id=_op(), host_id=ctx.host_id, seq=seq, accel=ctx.driver.accel,
                capacity=_capacity(ctx.settings), running=running, used_vcpus=vcpus,
                used_memory_mib=mem, warnings=warnings(ctx), interval_s=interval,
                pools=pool_stats(ctx.driver)))
            seq += 1
        except Exception as e:  # noqa: BLE001 - bus down: keep beating when it is back
            log.warning("heartbeat failed: %s", e)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
