"""A host fetches the env of a sandbox it starts, or the context of an image
it builds: request/reply on the host's own subject
(`corral.rpc.gateway.env|buildctx.<host_id>`; only that host may publish
there), answered by any gateway instance."""
from __future__ import annotations

import asyncio

import base64

from common.rpc import request_subject, serve
from contracts.rpc import (BuildContextPart, BuildContextRequest, RpcError, SandboxEnv,
                           SandboxEnvRequest)
from contracts.subjects import RPC_GATEWAY_BUILDCTX_PREFIX, RPC_GATEWAY_ENV_PREFIX

from ..application.errors import NotFound, OutOfOrder
from ..bootstrap import GatewayContext

QUEUE = "gateway"


def _refuse(e: Exception) -> RpcError | None:
    if isinstance(e, OutOfOrder):
        return RpcError(error="conflict", detail=str(e))
    if isinstance(e, NotFound):
        return RpcError(error="not_found", detail=e.detail)
    return None


async def serve_env(ctx: GatewayContext, stop: asyncio.Event) -> None:
    async def env(req: SandboxEnvRequest) -> SandboxEnv:
        host_id = request_subject().rsplit(".", 1)[-1]
        return SandboxEnv(env=await ctx.sandboxes.env_for_host(req.sandbox_id, req.org_id,
                                                               host_id))

    async def build_context(req: BuildContextRequest) -> BuildContextPart:
        host_id = request_subject().rsplit(".", 1)[-1]
        data, total = await ctx.images.context_part(req.image_id, req.org_id, host_id,
                                                    req.offset)
        return BuildContextPart(data_b64=base64.b64encode(data).decode(), total=total)

    await serve(ctx.bus.client, {
        f"{RPC_GATEWAY_ENV_PREFIX}.*": (SandboxEnvRequest, env),
        f"{RPC_GATEWAY_BUILDCTX_PREFIX}.*": (BuildContextRequest, build_context)},
        stop, max_bytes=4096, queue=QUEUE, refuse=_refuse)
