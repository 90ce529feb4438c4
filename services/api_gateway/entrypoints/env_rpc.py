"""A host fetches the env of a sandbox it starts: request/reply on the host's
own subject (`corral.rpc.gateway.env.<host_id>`; only that host may publish
there), answered by any gateway instance."""
from __future__ import annotations

import asyncio

from common.rpc import request_subject, serve
from contracts.rpc import RpcError, SandboxEnv, SandboxEnvRequest
from contracts.subjects import RPC_GATEWAY_ENV_PREFIX

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

    await serve(ctx.bus.client, {f"{RPC_GATEWAY_ENV_PREFIX}.*": (SandboxEnvRequest, env)},
                stop, max_bytes=4096, queue=QUEUE, refuse=_refuse)
