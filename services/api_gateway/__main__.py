"""`python -m services.api_gateway`: the REST edge."""
from __future__ import annotations

import asyncio
import logging

from common.httpserver import serve_http
from common.logging import configure_logging
from common.service import install_stop_handlers, run_until_stopped, warn_if_plaintext
from common.tracing import setup_tracing
from contracts.subjects import CONSUMERS

from .bootstrap import bootstrap
from .entrypoints.expiry import expiry_loop
from .entrypoints.http_app import create_app
from .entrypoints.subscriber import ingest_handler
from .settings import GatewaySettings

log = logging.getLogger("corral.gateway")


async def main() -> None:
    settings = GatewaySettings()
    configure_logging("api_gateway", settings.log_level)
    setup_tracing("api_gateway")
    stop = asyncio.Event()
    install_stop_handlers(stop)
    ctx = await bootstrap(settings)
    ingest = next(c for c in CONSUMERS if c.durable == "gateway-sandbox-ingest")
    log.info("gateway listening on http://%s:%d", settings.http_host, settings.http_port)
    warn_if_plaintext("REST API", settings.http_host)
    await run_until_stopped(
        stop,
        serve_http(create_app(ctx), settings.http_host, settings.http_port, stop),
        ctx.relay.run(stop),
        ctx.read_model.run(ctx.ledger, stop),
        ctx.bus.consume(ingest, ingest_handler(ctx), stop),
        expiry_loop(ctx, stop),
        on_stop=ctx.close,
    )
    log.info("gateway stopped")


if __name__ == "__main__":
    asyncio.run(main())
