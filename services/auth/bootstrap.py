"""Wiring: settings -> store, broker, notifier, use cases. No I/O here."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from faststream.nats import NatsBroker

from .adapters.notify import NatsRevocationNotifier
from .adapters.sql import SqlStore
from .application.service import AuthService
from .entrypoints.rpc import register
from .settings import AuthSettings


@dataclass
class AuthApp:
    settings: AuthSettings
    store: SqlStore
    service: AuthService
    broker: NatsBroker | None = None


def build_offline(settings: AuthSettings) -> AuthApp:
    """Store and use cases only (the `bootstrap` CLI talks to the DB directly)."""
    store = SqlStore.from_settings(settings.store, settings.state_dir)
    return AuthApp(settings, store, AuthService(store))


def build(settings: AuthSettings) -> AuthApp:
    app = build_offline(settings)
    broker = NatsBroker(settings.nats_url, name=f"corral-auth-{settings.instance}",
                        max_reconnect_attempts=-1, reconnect_time_wait=1,
                        logger=logging.getLogger("corral.auth.faststream"),
                        log_level=logging.DEBUG)  # per-message lines: debug only
    app.service.notifier = NatsRevocationNotifier(broker)
    register(broker, app.service, settings.auth_queue, settings.auth_max_request_bytes)
    app.broker = broker
    return app
