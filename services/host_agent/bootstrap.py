"""Wires the host agent: identity from its token, store, driver, bus."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay
from common.rpc import RpcFailure, request
from contracts import subjects
from contracts.rpc import HostIdentity, RegisterHost
from contracts.subjects import host_agent_consumer

from .application.ports import VmmDriver
from .application.records import VmRecords
from .application.service import HostAgentService
from .settings import HostAgentSettings, pool_targets

if TYPE_CHECKING:
    from .adapters.network import HostNetwork

log = logging.getLogger("corral.host_agent")


@dataclass
class HostAgentContext:
    settings: HostAgentSettings
    host_id: str
    bus: Bus
    records: VmRecords
    relay: OutboxRelay
    driver: VmmDriver
    service: HostAgentService

    async def ready(self) -> bool:
        return self.bus.connected

    async def close(self) -> None:
        await self.driver.close()
        await self.bus.close()
        self.records.close()


async def make_network(settings: HostAgentSettings) -> HostNetwork | None:
    if not settings.network:
        log.warning("networking disabled (CORRAL_NETWORK=false): sandboxes get no NIC")
        return None
    from .adapters.network import HostNetwork, check_network
    check = await asyncio.to_thread(check_network)
    if not check.ok:
        log.warning("host networking unusable; sandboxes get no NIC: %s",
                    "; ".join(f"{k}: {d}" for k, (ok, d) in check.items.items() if not ok))
        return None
    net = HostNetwork(settings.bridge, settings.subnet)
    await net.setup()
    return net


def vm_root(settings: HostAgentSettings, host_id: str) -> Path:
    """Short on purpose: unix socket paths inside must fit in 107 bytes."""
    return settings.state_dir.resolve() / f"vms-{host_id[:8]}"


async def make_driver(settings: HostAgentSettings, state_dir: Path, vms: Path) -> VmmDriver:
    if settings.driver == "fake":
        from .adapters.fake_vmm import FakeVmmDriver
        log.warning("using the FAKE VMM driver: sandboxes are idle processes, not VMs")
        return FakeVmmDriver(state_dir)
    from .adapters.guest_image import image_root
    from .adapters.qemu import QemuDriver
    templates = settings.template_dir or image_root().parent / "templates"
    return QemuDriver(vms, network=await make_network(settings), template_root=templates,
                      templates=settings.templates,
                      warm_pool=pool_targets(settings.warm_pool) or None)


async def register(bus: Bus, settings: HostAgentSettings, stop: asyncio.Event) -> str:
    """The host id comes from the auth service, derived from our token."""
    if not settings.host_token:
        raise SystemExit("CORRAL_HOST_TOKEN is required (create one: POST /v1/hosts/tokens)")
    delay = 0.2
    while not stop.is_set():
        try:
            ident = await request(bus.client, subjects.RPC_AUTH_REGISTER_HOST,
                                  RegisterHost(token=settings.host_token,
                                               hostname=settings.hostname), HostIdentity, 3.0)
            return ident.host_id
        except RpcFailure as e:
            if e.code == "unauthorized":
                raise SystemExit("host token rejected by the auth service") from None
            log.warning("registration failed (%s); retrying", e.code)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5)
    raise SystemExit(0)


async def bootstrap(settings: HostAgentSettings, stop: asyncio.Event) -> HostAgentContext:
    bus = Bus(settings.nats_url, f"host-agent-{settings.hostname}")
    await bus.connect()
    await bus.ensure_topology()
    host_id = await register(bus, settings, stop)
    await bus.ensure_consumer(host_agent_consumer(host_id))
    state_dir = settings.state_dir / "host" / host_id
    state_dir.mkdir(parents=True, exist_ok=True)
    # The host's records are always local: they describe this machine's kernel objects.
    records = await asyncio.to_thread(VmRecords, store_env("sqlite", state_dir, "host_agent"))
    relay = OutboxRelay(records, bus, name="host-agent-relay")
    records.notify_on_save(asyncio.get_running_loop(), relay.wake)
    driver = await make_driver(settings, state_dir, vm_root(settings, host_id))
    service = HostAgentService(host_id, records, driver, bus.publish,
                               snapshot_root=settings.state_dir.resolve() / f"snaps-{host_id[:8]}")
    return HostAgentContext(settings, host_id, bus, records, relay, driver, service)
