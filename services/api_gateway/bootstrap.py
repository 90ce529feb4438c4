"""Wires the gateway's explicit dependencies."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from common.bus import Bus
from common.eventstore import store_env
from common.relay import OutboxRelay

from .adapters.auth_client import AuthClient
from .adapters.read_model import ReadModel, read_model_url
from .application.ledger import SandboxLedger
from .application.rate_limit import RateLimiter
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
    auth: AuthClient
    waiters: Waiters
    limits: Limits
    limiter: RateLimiter

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


async def bootstrap(settings: GatewaySettings) -> GatewayContext:
    bus = Bus(settings.nats_url, f"gateway-{settings.instance}")
    await bus.connect()
    await bus.ensure_topology()
    env = store_env(settings.store, settings.state_dir, "gateway")
    ledger = await asyncio.to_thread(SandboxLedger, env)
    relay = OutboxRelay(ledger, bus, name="gateway-relay")
    schema = None
    if settings.store != "sqlite":
        schema = (parse_qs(urlparse(settings.store).query).get("schema") or [None])[0]
    read_model = ReadModel(read_model_url(
        settings.store, str((settings.state_dir / "gateway-read.sqlite").resolve())), schema)
    await read_model.create()
    loop = asyncio.get_running_loop()

    def saved() -> None:
        loop.call_soon_threadsafe(relay.wake)
        loop.call_soon_threadsafe(read_model.wake)

    ledger.on_saved = saved
    auth = AuthClient(bus.nc, ttl_s=settings.auth_cache_s)
    await auth.start()
    limits = Limits(settings.quota_max_live, settings.quota_max_vcpus,
                    settings.quota_max_memory_mib)
    return GatewayContext(settings, bus, ledger, relay, read_model, auth, Waiters(), limits,
                          RateLimiter(settings.quota_creates_per_minute))
