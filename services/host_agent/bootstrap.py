"""Wires the host agent: identity from its token, store, driver, bus."""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay
from common.rpc import RpcFailure, request
from contracts import subjects
from contracts.rpc import HostIdentity, RegisterHost
from contracts.subjects import host_agent_consumer

from .adapters.buildctx_client import GatewayBuildContext
from .adapters.disk import DiskRoom
from .adapters.env_client import GatewayEnv
from .adapters.helper.client import HelperClient, HelperNetwork
from .adapters.network.policy import control_plane_addresses
from .application.ports import VmmDriver
from .application.image_builds import ImageBuilds
from .application.records import VmRecords
from .application.service import HostAgentService
from .settings import HostAgentSettings, cidr_list, pool_targets

if TYPE_CHECKING:
    from .adapters.qemu.vm import Network

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


async def make_network(settings: HostAgentSettings,
                       helper: HelperClient | None) -> Network | None:
    if not settings.network:
        log.warning("networking disabled (CORRAL_NETWORK=false): sandboxes get no NIC")
        return None
    if helper is not None:  # the helper owns the bridge (and its checks)
        via_helper = HelperNetwork(helper)
        await via_helper.setup()
        return via_helper
    from .adapters.network import HostNetwork, check_network
    check = await asyncio.to_thread(check_network)
    if not check.ok:
        log.warning("host networking unusable; sandboxes get no NIC: %s",
                    "; ".join(f"{k}: {d}" for k, (ok, d) in check.items.items() if not ok))
        return None
    net = HostNetwork(settings.bridge, settings.subnet, egress_deny=await egress_deny(settings),
                      egress_allow=cidr_list(settings.egress_allow))
    await net.setup()
    return net


async def egress_deny(settings: HostAgentSettings) -> list[str]:
    return cidr_list(settings.egress_deny) + await asyncio.to_thread(
        control_plane_addresses, settings.nats_url, settings.store)


def vm_root(settings: HostAgentSettings, host_id: str) -> Path:
    """Short on purpose: unix socket paths inside must fit in 107 bytes."""
    return settings.state_dir.resolve() / f"vms-{host_id[:8]}"


async def make_driver(settings: HostAgentSettings, state_dir: Path, vms: Path,
                      store: Any = None) -> VmmDriver:
    """`store`: the custom images (ImageStore) the driver resolves refs in."""
    if settings.driver == "fake":
        from .adapters.fake_vmm import FakeVmmDriver
        log.warning("using the FAKE VMM driver: sandboxes are idle processes, not VMs")
        return FakeVmmDriver(state_dir)
    from .adapters.guest_image import ensure_image, image_root
    from .adapters.qemu import QemuDriver
    templates = settings.template_dir or image_root().parent / "templates"
    helper = HelperClient(settings.helper_socket) if settings.helper_socket else None
    if helper is None and os.geteuid() != 0:
        raise SystemExit("the host agent is not root: give it a privileged helper "
                         "(CORRAL_HELPER_SOCKET; `python -m services.host_agent helper`)")
    return QemuDriver(vms, network=await make_network(settings, helper),
                      template_root=templates, templates=settings.templates,
                      warm_pool=pool_targets(settings.warm_pool) or None, privileged=helper,
                      image_resolver=store.resolve if store is not None else ensure_image)


def make_images(settings: HostAgentSettings, driver: VmmDriver, records: VmRecords, bus: Bus,
                host_id: str, store: Any, disk: DiskRoom) -> ImageBuilds:
    """Builds run in build VMs of the QEMU driver; a fake-driver host fails them."""
    ctx = GatewayBuildContext(bus.client, host_id)
    if store is None:
        return ImageBuilds(host_id, records, ctx)
    from .adapters.guest_image import ensure_image
    from .adapters.images import (BuildVmConfig, ImageBuilder, InMemoryRecorder, bases_for,
                                  import_archive, remover)
    builder = ImageBuilder(driver, store, InMemoryRecorder(),
                           BuildVmConfig(resolver=settings.build_resolver),
                           context_max_bytes=settings.build_context_max_mib << 20)
    return ImageBuilds(host_id, records, ctx, builder,
                       importer=lambda path, org: import_archive(
                           store, ensure_image("default"), path, scope=org),
                       bases=bases_for(store), remove=remover(store, driver,
                                                             settings.layer_cache_mib << 20),
                       tmp_dir=store.root / "tmp", disk_lacks=disk.lacks,
                       prepare=templates_for(driver, settings.image_templates))


def templates_for(driver: VmmDriver, classes: str) -> Callable[[str], Awaitable[None]] | None:
    """`CORRAL_IMAGE_TEMPLATES`: a new image's templates, made as soon as it is built."""
    wanted = [tuple(int(x) for x in c.split("/")) for c in classes.split(",") if c]
    if not wanted:
        return None

    async def prepare(ref: str) -> None:
        for vcpus, mem in wanted:
            if await driver.prepare(ref, vcpus, mem):
                log.info("template ready for %s/%d/%d", ref, vcpus, mem)
    return prepare


async def ensure_command_consumer(bus: Bus, host_id: str, stop: asyncio.Event) -> None:
    """Our durable consumer of commands; the control plane creates the stream,
    so wait for it if this agent came up first."""
    delay = 0.2
    while not stop.is_set():
        try:
            await bus.ensure_consumer(host_agent_consumer(host_id))
            return
        except (NotFoundError, NatsTimeout, TimeoutError) as e:
            log.warning("command stream not ready (%r); retrying", e)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5)
    raise SystemExit(0)


async def register(bus: Bus, settings: HostAgentSettings, stop: asyncio.Event) -> str:
    """The host id comes from the auth service, derived from our token."""
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
    if not settings.host_token:
        raise SystemExit("CORRAL_HOST_TOKEN is required (create one: POST /v1/hosts/tokens)")
    # The bus knows this agent by its token: it may use only its own host's subjects.
    bus = Bus(settings.nats_url, f"host-agent-{settings.hostname}", subjects.HOST_BUS_USER,
              settings.host_token, subjects.host_inbox(settings.host_token),
              settings.nats_tls())
    await bus.connect()
    host_id = await register(bus, settings, stop)
    bus.publisher_host = host_id  # its sandbox facts go on its own subjects
    await ensure_command_consumer(bus, host_id, stop)
    state_dir = settings.state_dir / "host" / host_id
    state_dir.mkdir(parents=True, exist_ok=True)
    # The host's records are always local: they describe this machine's kernel objects.
    records = await asyncio.to_thread(VmRecords, store_env("sqlite", state_dir, "host_agent"))
    relay = OutboxRelay(records, bus, name="host-agent-relay",
                        dead_letters=subjects.host_relay_dead_letters(host_id))
    records.notify_on_save(asyncio.get_running_loop(), relay.wake)
    store = None
    if settings.driver == "qemu":
        from .adapters.guest_image import ensure_image, image_root
        from .adapters.images import ImageStore
        store = ImageStore(settings.images_dir or image_root() / "custom", ensure_image)
    driver = await make_driver(settings, state_dir, vm_root(settings, host_id), store)
    snapshot_root = settings.state_dir.resolve() / f"snaps-{host_id[:8]}"
    service = HostAgentService(host_id, records, driver, bus.publish, snapshot_root=snapshot_root,
                               env_source=GatewayEnv(bus.client, host_id),
                               disk_lacks=DiskRoom(snapshot_root,
                                                   settings.min_free_disk_mib).lacks,
                               images=make_images(settings, driver, records, bus, host_id, store,
                                                  DiskRoom(store.root if store else snapshot_root,
                                                           settings.min_free_disk_mib)))
    return HostAgentContext(settings, host_id, bus, records, relay, driver, service)
