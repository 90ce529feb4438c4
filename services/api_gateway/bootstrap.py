"""Wires the gateway's explicit dependencies."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from common.bus import Bus
from common.eventstore import store_env
from common.metrics import CREATE_SECONDS
from common.relay import OutboxRelay
from contracts.subjects import consumer

from .adapters.auth_client import AuthClient
from .adapters.billing_client import BillingClient
from .adapters.build_contexts import BuildContexts
from .adapters.event_stream import JetStreamEvents
from .adapters.fleet_client import FleetClient
from .adapters.host_client import HostClient
from .adapters.read_model import ReadModel
from .adapters.sealer import Sealer
from .application.events import EventFeed
from .application.guest_io import GuestIO
from .application.transfers import Transfers
from .application.image_service import Images
from .application.images import BuildLimits
from .application.ledger import SandboxLedger
from .application.op_limits import OpLimits, parse_op_limits
from .application.rate_limit import RateLimiter
from .application.spend import SpendGate
from .application.sandboxes import Sandboxes
from .application.waiters import Waiters
from .domain.quota import Limits
from .settings import GatewaySettings


@dataclass
class GatewayContext:
    settings: GatewaySettings
    bus: Bus
    ledger: SandboxLedger
    relay: OutboxRelay
    read_model: ReadModel
    waiters: Waiters
    sandboxes: Sandboxes
    io: GuestIO
    auth: AuthClient
    fleet: FleetClient
    billing: BillingClient
    events: EventFeed
    images: Images
    transfers: Transfers

    async def ready(self) -> tuple[bool, str]:
        if not self.bus.connected:
            return False, "bus unreachable"
        try:
            await asyncio.wait_for(asyncio.to_thread(self.ledger.recorder.max_notification_id), 2)
            await asyncio.wait_for(self.read_model.position(), 2)
        except Exception:  # noqa: BLE001 - any store failure means not ready
            return False, "store unreachable"
        return True, "ready"

    async def close(self) -> None:
        await self.read_model.close()
        await self.bus.close()
        self.ledger.close()


def observe_create(start_mode: str | None, seconds: float) -> None:
    CREATE_SECONDS.labels(start_mode or "unknown").observe(seconds)


async def bootstrap(settings: GatewaySettings, stop: asyncio.Event | None = None) -> GatewayContext:
    bus = Bus.of_service(settings, "gateway", f"gateway-{settings.instance}")
    await bus.connect()
    await bus.ensure_topology(consumer("gateway-sandbox-ingest"))
    sealer = (Sealer.from_text(settings.secrets_key) if settings.secrets_key
              else Sealer.load_or_create(settings.state_dir / "gateway-secrets.key"))
    ledger = await asyncio.to_thread(
        SandboxLedger, store_env(settings.store, settings.state_dir, "gateway"), sealer)
    ledger.on_first_start = observe_create
    relay = OutboxRelay(ledger, bus, name="gateway-relay")
    read_model = ReadModel(settings.store,
                           str((settings.state_dir / "gateway-read.sqlite").resolve()))
    await read_model.create()
    ledger.notify_on_save(asyncio.get_running_loop(), relay.wake, read_model.wake)
    auth = AuthClient(bus.client, ttl_s=settings.auth_cache_s)
    await auth.start()
    ops = OpLimits(parse_op_limits(settings.quota_ops))
    limits = Limits(settings.quota_max_live, settings.quota_max_vcpus,
                    settings.quota_max_memory_mib, settings.quota_max_snapshots,
                    settings.quota_max_snapshot_mib,
                    max_pending_snapshots=ops.limits["snapshot"].concurrency)
    waiters = Waiters()
    billing = BillingClient(bus.client, timeout_s=10.0)
    spend = SpendGate(billing.spend_of)
    sandboxes = Sandboxes(ledger, read_model, limits,
                          RateLimiter(settings.quota_creates_per_minute), waiters, ops,
                          settings.snapshot_ttl_s, spend)
    contexts = BuildContexts(read_model.engine)
    await contexts.create()
    stream = JetStreamEvents(bus.jetstream)
    images = Images(ledger, contexts, stream, waiters,
                    BuildLimits(settings.build_concurrency, settings.max_images,
                                settings.build_vcpus, settings.build_memory_mib,
                                settings.build_timeout_s),
                    settings.build_context_max_mib << 20)
    io = GuestIO(ledger, HostClient(bus.client), ops)
    return GatewayContext(settings, bus, ledger, relay, read_model, waiters, sandboxes, io,
                          auth, FleetClient(bus.client, timeout_s=5.0),
                          billing, EventFeed(stream, sandboxes), images, Transfers(io))
