"""`serve`: schema, broker, health, until stopped."""
from __future__ import annotations

import asyncio
import logging

from common.logging import redact
from common.service import run_until_stopped, serve_health

from ..bootstrap import build
from ..settings import AuthSettings

log = logging.getLogger("corral.auth")


async def serve(settings: AuthSettings, stop: asyncio.Event,
                started: asyncio.Event | None = None) -> None:
    app = build(settings)
    assert app.broker is not None
    await app.store.create_schema()
    await app.broker.start()
    log.info("auth serving on %s (queue %s)", redact(settings.nats_url), settings.auth_queue)
    if started:
        started.set()

    async def ready() -> bool:
        return bool(app.broker and app.broker.connection.is_connected) and await app.store.ping()

    async def shutdown() -> None:
        await app.broker.stop()
        await app.store.close()

    await run_until_stopped(stop, serve_health(settings.health_port, ready, stop, settings.health_host),
                            on_stop=shutdown)
