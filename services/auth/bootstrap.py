"""Wiring: settings -> store, use cases, broker with the RPC endpoints."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from faststream.nats import NatsBroker
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client

from common.bus import servers_of
from common.logging import redact
from contracts.subjects import service_inbox

from .adapters.notify import NatsRevocationNotifier, connect_system
from .adapters.sql import SqlStore
from .application.bus_auth import BusAuthorizer, parse_digests
from .application.service import AuthService
from .entrypoints.callout import register_callout
from .entrypoints.rpc import register
from .settings import AuthSettings

log = logging.getLogger("corral.auth")


@dataclass
class AuthContext:
    settings: AuthSettings
    store: SqlStore
    service: AuthService
    broker: NatsBroker
    system: Client | None  # system-account connection (cuts revoked hosts' connections)

    async def ready(self) -> bool:
        return bool(self.broker.connection.is_connected) and await self.store.ping()

    async def close(self) -> None:
        await self.broker.stop()
        if self.system is not None:
            await self.system.close()
        await self.store.close()


def offline(settings: AuthSettings) -> tuple[SqlStore, AuthService]:
    """Store and use cases only (provisioning talks to the database directly)."""
    store = SqlStore.from_settings(settings.store, settings.state_dir)
    return store, AuthService(store)


async def bootstrap(settings: AuthSettings, stop: asyncio.Event | None = None) -> AuthContext:
    store = SqlStore.from_settings(settings.store, settings.state_dir)
    tls = settings.nats_tls()
    broker = NatsBroker(servers_of(settings.nats_url), name=f"corral-auth-{settings.instance}",
                        max_reconnect_attempts=-1, reconnect_time_wait=1,
                        inbox_prefix=service_inbox("auth"),
                        security=NatsUserPassword(settings.nats_user, settings.nats_password,
                                                  ssl_context=tls)
                        if settings.nats_user else None,
                        logger=logging.getLogger("corral.auth.faststream"),
                        log_level=logging.DEBUG)  # per-message lines: debug only
    system = (await connect_system(settings.nats_url, settings.bus_system_password, tls)
              if settings.bus_system_password else None)
    service = AuthService(store, NatsRevocationNotifier(broker, system))
    register(broker, service, settings.auth_queue, settings.auth_max_request_bytes)
    if settings.bus_issuer_seed:
        authorizer = BusAuthorizer(service, parse_digests(settings.bus_service_digests))
        register_callout(broker, authorizer, settings.bus_issuer_seed, settings.auth_queue)
    else:
        log.warning("no CORRAL_BUS_ISSUER_SEED: this auth service decides no bus connections "
                    "(only a NATS server without authentication works with it)")
    await store.create_schema()
    await broker.start()
    log.info("auth serving on %s (queue %s)", redact(settings.nats_url), settings.auth_queue)
    return AuthContext(settings, store, service, broker, system)
