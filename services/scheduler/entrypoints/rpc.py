"""Fleet RPCs (core NATS request/reply, queue group `scheduler`).

Any instance may answer: hosts and their scheduling state come from the
shared store; `alive` and the heartbeat age are the answering instance's view
(every instance watches every heartbeat).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable


from common.logging import log_context
from common.rpc import answer
from contracts import rpc
from contracts import subjects as s

from ..application.fleet import CORDON_NOTE, DRAIN_NOTE, Fleet, UnknownHost
from ..domain.host import Host

log = logging.getLogger("corral.scheduler.rpc")
QUEUE = "scheduler"
MAX_REQUEST = 4096


def _heartbeat_age(liveness, host_id: str) -> float | None:  # noqa: ANN001 - Liveness
    # Liveness keeps host -> (last_seen, interval) on its own injected clock.
    seen = getattr(liveness, "_seen", {}).get(host_id)
    return None if seen is None else round(max(0.0, liveness.clock() - seen[0]), 3)


def host_info(h: Host, alive: set[str], liveness) -> rpc.HostInfo:  # noqa: ANN001
    c = h.capacity
    return rpc.HostInfo(
        host_id=h.host_id, hostname=h.hostname, status=h.display_status, accel=h.accel,
        capacity=rpc.HostResources(vcpus=c["vcpus"], memory_mib=c["memory_mib"],
                                   sandboxes=c["max_sandboxes"]),
        used=rpc.HostResources(vcpus=h.used_vcpus, memory_mib=h.used_memory_mib,
                               sandboxes=len(h.allocations)),
        alive=h.host_id in alive and h.status != "lost",
        last_heartbeat_age_s=_heartbeat_age(liveness, h.host_id))


def _remaining(h: Host) -> list[rpc.HostSandbox]:
    return [rpc.HostSandbox(sandbox_id=sid, org_id=a["org_id"], vcpus=a["vcpus"],
                            memory_mib=a["memory_mib"])
            for sid, a in sorted(h.allocations.items())]


async def serve_fleet_rpc(ctx, stop: asyncio.Event, fleet: Fleet | None = None) -> None:  # noqa: ANN001
    fleet = fleet or Fleet(ctx.app)
    await asyncio.to_thread(fleet.refresh)  # know every recorded host before answering

    async def list_hosts(_: rpc.ListHosts) -> rpc.HostList:
        hosts = await asyncio.to_thread(fleet.hosts)
        alive = set(ctx.liveness.alive())
        return rpc.HostList(items=[host_info(h, alive, ctx.liveness) for h in hosts])

    def action(name: str, call: Callable[[str], tuple[Host, bool]], note: str):  # noqa: ANN202
        async def run(req: rpc.HostAction) -> rpc.HostActionResult:
            with log_context(host_id=req.host_id):
                h, changed = await asyncio.to_thread(call, req.host_id)
                if changed:
                    log.info("host %s", name, extra={"remaining": len(h.allocations)})
            return rpc.HostActionResult(
                host=host_info(h, set(ctx.liveness.alive()), ctx.liveness), changed=changed,
                remaining=_remaining(h), note=note)
        return run

    routes: dict[str, tuple[type[rpc.RpcModel], Callable[..., Awaitable[rpc.RpcModel]]]] = {
        s.RPC_SCHEDULER_HOSTS_LIST: (rpc.ListHosts, list_hosts),
        s.RPC_SCHEDULER_HOSTS_CORDON: (rpc.HostAction, action("cordoned", fleet.cordon,
                                                              CORDON_NOTE)),
        s.RPC_SCHEDULER_HOSTS_DRAIN: (rpc.HostAction, action("draining", fleet.drain,
                                                             DRAIN_NOTE)),
        s.RPC_SCHEDULER_HOSTS_UNCORDON: (rpc.HostAction, action("uncordoned", fleet.uncordon,
                                                                "open for placements")),
    }
    tasks: set[asyncio.Task] = set()

    async def reply_to(msg) -> None:  # noqa: ANN001 - nats Msg
        req_type, call = routes[msg.subject]
        reply = await answer(msg.data, req_type, call, MAX_REQUEST, _refuse)
        try:
            await msg.respond(reply.model_dump_json().encode())
        except Exception as e:  # noqa: BLE001 - requester gone or bus down
            log.warning("could not answer %s: %r", msg.subject, e)

    async def on_msg(msg) -> None:  # noqa: ANN001
        t = asyncio.ensure_future(reply_to(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    subs = [await ctx.bus.nc.subscribe(subject, queue=QUEUE, cb=on_msg) for subject in routes]
    try:
        await stop.wait()
    finally:
        for sub in subs:
            await sub.unsubscribe()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _refuse(e: Exception) -> rpc.RpcError | None:
    if isinstance(e, UnknownHost):
        return rpc.RpcError(error="not_found", detail=f"no host {e.args[0]}")
    return None
