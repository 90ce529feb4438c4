"""Fleet RPCs (core NATS request/reply, queue group `scheduler`).

Any instance may answer: hosts and their scheduling state come from the
shared store; `alive` and the heartbeat age are the answering instance's view
(every instance watches every heartbeat).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.logging import log_context
from common.rpc import Route, serve
from contracts import rpc
from contracts import subjects as s

from ..application.fleet import CORDON_NOTE, DRAIN_NOTE, Fleet, UnknownHost
from ..application.liveness import Liveness
from ..bootstrap import SchedulerContext
from ..domain.host import Host

log = logging.getLogger("corral.scheduler.rpc")
QUEUE = "scheduler"
MAX_REQUEST = 4096


def host_info(h: Host, alive: set[str], liveness: Liveness) -> rpc.HostInfo:
    c = h.capacity
    age = liveness.age(h.host_id)
    return rpc.HostInfo(
        host_id=h.host_id, hostname=h.hostname, status=h.display_status, accel=h.accel,
        capacity=rpc.HostResources(vcpus=c["vcpus"], memory_mib=c["memory_mib"],
                                   sandboxes=c["max_sandboxes"]),
        used=rpc.HostResources(vcpus=h.used_vcpus, memory_mib=h.used_memory_mib,
                               sandboxes=len(h.allocations)),
        unknown=len(h.unknown_ids),
        alive=h.host_id in alive and h.status != "lost",
        last_heartbeat_age_s=None if age is None else round(age, 3))


def _remaining(h: Host) -> list[rpc.HostSandbox]:
    return [rpc.HostSandbox(sandbox_id=sid, org_id=a["org_id"], vcpus=a["vcpus"],
                            memory_mib=a["memory_mib"])
            for sid, a in sorted(h.allocations.items())]


def routes(ctx: SchedulerContext, fleet: Fleet) -> dict[str, Route]:
    async def list_hosts(_: rpc.ListHosts) -> rpc.HostList:
        hosts = await asyncio.to_thread(fleet.hosts)
        alive = set(ctx.liveness.alive())
        return rpc.HostList(items=[host_info(h, alive, ctx.liveness) for h in hosts])

    def action(name: str, call: Callable[[str], tuple[Host, bool]],
               note: str) -> Callable[[rpc.HostAction], Awaitable[rpc.HostActionResult]]:
        async def run(req: rpc.HostAction) -> rpc.HostActionResult:
            with log_context(host_id=req.host_id):
                h, changed = await asyncio.to_thread(call, req.host_id)
                if changed:
                    log.info("host %s", name, extra={"remaining": len(h.allocations)})
            return rpc.HostActionResult(
                host=host_info(h, set(ctx.liveness.alive()), ctx.liveness), changed=changed,
                remaining=_remaining(h), note=note)
        return run

    return {
        s.RPC_SCHEDULER_HOSTS_LIST: (rpc.ListHosts, list_hosts),
        s.RPC_SCHEDULER_HOSTS_CORDON: (rpc.HostAction, action("cordoned", fleet.cordon,
                                                              CORDON_NOTE)),
        s.RPC_SCHEDULER_HOSTS_DRAIN: (rpc.HostAction, action("draining", fleet.drain,
                                                             DRAIN_NOTE)),
        s.RPC_SCHEDULER_HOSTS_UNCORDON: (rpc.HostAction, action("uncordoned", fleet.uncordon,
                                                                "open for placements")),
    }


async def serve_fleet_rpc(ctx: SchedulerContext, stop: asyncio.Event) -> None:
    fleet = Fleet(ctx.app)
    await asyncio.to_thread(fleet.refresh)  # know every recorded host before answering
    await serve(ctx.bus.client, routes(ctx, fleet), stop, max_bytes=MAX_REQUEST, queue=QUEUE,
                refuse=_refuse)


def _refuse(e: Exception) -> rpc.RpcError | None:
    if isinstance(e, UnknownHost):
        return rpc.RpcError(error="not_found", detail=f"no host {e.args[0]}")
    return None
