"""Registration announcement and periodic heartbeats."""
from __future__ import annotations

import asyncio
import logging
import secrets

from contracts.host import HostCapacity, HostHeartbeat, HostRegistered

log = logging.getLogger("corral.host_agent")
VERSION = "0.1.0"


def _capacity(s) -> HostCapacity:  # noqa: ANN001
    return HostCapacity(vcpus=s.capacity_vcpus, memory_mib=s.capacity_memory_mib,
                        max_sandboxes=s.max_sandboxes)


def _op() -> str:
    return "op_" + secrets.token_hex(10)


async def announce(ctx) -> None:  # noqa: ANN001 - HostAgentContext
    await ctx.bus.publish(HostRegistered(
        op_id=_op(), host_id=ctx.host_id, hostname=ctx.settings.hostname,
        capacity=_capacity(ctx.settings), accel=ctx.driver.accel, agent_version=VERSION))


def pool_stats(driver) -> dict[str, dict[str, int]]:  # noqa: ANN001
    stats = getattr(driver, "pool_stats", None)
    if stats is None:
        return {}
    return {str(k if isinstance(k, str) else "/".join(map(str, k))): {
        f: int(v) for f, v in d.items() if isinstance(v, (int, float))}
        for k, d in stats().items()}


def warnings(ctx) -> list[str]:  # noqa: ANN001
    accel = ctx.driver.accel
    if accel == "tcg":
        return ["accel=tcg: KVM unusable on this host, VMs run under slow software emulation"]
    if accel == "fake":
        return ["driver=fake: sandboxes are not VMs (test driver)"]
    return []


async def heartbeat_loop(ctx, stop: asyncio.Event) -> None:  # noqa: ANN001
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
        except asyncio.TimeoutError:
            pass
