"""Wiring: settings -> store, use cases, broker with the RPC endpoints."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from faststream.nats import NatsBroker

from common.logging import redact

from .adapters.notify import NatsRevocationNotifier
from .adapters.sql import SqlStore
from .application.service import AuthService
from .entrypoints.rpc import register
from .settings import AuthSettings

log = logging.getLogger("corral.auth")


@dataclass
class AuthContext:
    settings: AuthSettings
    store: SqlStore
    service: AuthService
    broker: NatsBroker

    async def ready(self) -> bool:
        return bool(self.broker.connection.is_connected) and await self.store.ping()

    async def close(self) -> None:
        await self.broker.stop()
        await self.store.close()


def offline(settings: AuthSettings) -> tuple[SqlStore, AuthService]:
    """Store and use cases only (provisioning talks to the database directly)."""
    store = SqlStore.from_settings(settings.store, settings.state_dir)
    return store, AuthService(store)


async def bootstrap(settings: AuthSettings, stop: asyncio.Event | None = None) -> AuthContext:
    store = SqlStore.from_settings(settings.store, settings.state_dir)
    broker = NatsBroker(settings.nats_url, name=f"corral-auth-{settings.instance}",
                        max_reconnect_attempts=-1, reconnect_time_wait=1,
                        logger=logging.getLogger("corral.auth.faststream"),
                        log_level=logging.DEBUG)  # per-message lines: debug only
    service = AuthService(store, NatsRevocationNotifier(broker))
    register(broker, service, settings.auth_queue, settings.auth_max_request_bytes)
    await store.create_schema()
    await broker.start()
    log.info("auth serving on %s (queue %s)", redact(settings.nats_url), settings.auth_queue)
    return AuthContext(settings, store, service, broker)
