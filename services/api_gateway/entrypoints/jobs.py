"""What runs in the gateway's process: HTTP, outbox relay, read model, fact
ingest, TTL expiry."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from common.httpserver import serve_http
from common.metrics import SANDBOXES, refresh_loop
from common.service import serve_health, warn_if_plaintext
from contracts.subjects import consumer, sandbox_of_subject

from ..bootstrap import GatewayContext
from ..domain.sandbox import ENDED, LIVE
from .env_rpc import serve_env
from .expiry import expiry_loop
from .http_app import create_app
from .subscriber import ingest_handler

log = logging.getLogger("corral.gateway")


def jobs(ctx: GatewayContext, stop: asyncio.Event) -> list[Awaitable[None]]:
    s = ctx.settings
    log.info("gateway listening on http://%s:%d", s.http_host, s.http_port)
    warn_if_plaintext("REST API", s.http_host)
    return [serve_http(create_app(ctx), s.http_host, s.http_port, stop,
                       max_concurrency=s.http_max_concurrency,
                       header_timeout_s=s.http_header_timeout_s),
            ctx.relay.run(stop),
            ctx.read_model.run(ctx.ledger, stop),
            # one sandbox's facts in order (its control-plane and host subjects alike)
            ctx.bus.consume(consumer("gateway-sandbox-ingest"), ingest_handler(ctx), stop,
                            concurrency=s.ingest_concurrency, order_key=sandbox_of_subject),
            expiry_loop(ctx, stop),
            serve_env(ctx, stop),
            serve_health(s.health_port, lambda: _ready(ctx), stop, s.health_host),
            refresh_loop(ctx.bus, [consumer("gateway-sandbox-ingest")], [ctx.relay], stop,
                         s.metrics_interval_s, extra=lambda: _sandbox_gauges(ctx))]


async def _ready(ctx: GatewayContext) -> bool:
    return (await ctx.ready())[0]


async def _sandbox_gauges(ctx: GatewayContext) -> None:
    counts = await ctx.read_model.count_by_state()
    for state in {*counts, *LIVE, *ENDED}:  # a state with none is 0, not absent
        SANDBOXES.labels(state).set(counts.get(state, 0))
